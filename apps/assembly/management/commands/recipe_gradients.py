import json
import os
import tempfile
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from apps.assembly.engine.gradients import GradientError, find_gradients, parse_points, resample, set_gradient


class Command(BaseCommand):
    help = ("List a recipe's gradients (parameters given as lists of numbers across the layers), "
            "or rewrite one in place, leaving the rest of the file as it is.")

    def add_arguments(self, parser):
        parser.add_argument("recipe", help="the recipe's YAML file")
        parser.add_argument("--set", dest="new_values", metavar="PATH=V1,V2,...",
                            help="new points for the gradient at PATH")
        parser.add_argument("--points", dest="resample_to", metavar="PATH=N",
                            help="resample the gradient at PATH to N points (the curve keeps its shape)")
        parser.add_argument("--json", dest="as_json", action="store_true", help="print the gradients as JSON")

    def handle(self, *args, recipe, new_values, resample_to, as_json, **opts):
        path = Path(recipe).expanduser()
        if not path.is_file():
            raise CommandError(f"{path}: no such recipe file")
        text = path.read_text()
        try:
            if new_values or resample_to:
                where, _, raw = (new_values or resample_to).partition("=")
                current = {g.path: g for g in find_gradients(text)}
                if where not in current:
                    known = ", ".join(current) or "none"
                    raise CommandError(f"{path}: no gradient at {where!r} (gradients: {known})")
                if new_values:
                    values = parse_points(raw.split(","))
                else:
                    values = resample(current[where].values, int(raw))
                text = set_gradient(text, where, values)
                _write_atomically(path, text)
            gradients = find_gradients(text)
        except (GradientError, ValueError) as exc:
            raise CommandError(f"{path}: {exc}") from exc
        if as_json:
            self.stdout.write(json.dumps([{"path": g.path, "name": g.name, "where": g.where,
                                      "values": list(g.values)} for g in gradients]))
            return
        if not gradients:
            self.stdout.write(f"{path}: no gradients")
        for g in gradients:
            self.stdout.write(f"{g.path}  ({g.name}, {g.where}): {', '.join(f'{v:g}' for v in g.values)}")


def _write_atomically(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
