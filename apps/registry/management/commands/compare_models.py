from apps.monitoring.foreground import ForegroundCommand
from apps.registry import services


class Command(ForegroundCommand):
    help = "Say what two or more models allow together: merge, splice, swap, adapter."
    user_errors = (*ForegroundCommand.user_errors, services.HeaderError)

    def add_arguments(self, parser):
        parser.add_argument("models", nargs="+", metavar="MODEL", help="paths or NAME[@VERSION]")

    def handle(self, *args, models, **opts):
        from apps.registry.engine.compat import compatibility_matrix
        from apps.registry.engine.model import read_model

        if len(models) < 2:
            raise ValueError("compare needs two or more models")
        files = {ref: read_model(services.resolve_model(ref)[0]) for ref in models}
        matrix = compatibility_matrix(files)
        lines = []
        for pair in matrix["pairs"]:
            lines.append(f"{pair['a']} vs {pair['b']}")
            for what in ("weight_merge", "layer_splice", "component_swap", "adapter"):
                verdict = pair[what]
                mark = "yes" if verdict["ok"] else "no "
                reasons = "; ".join(verdict.get("reasons", [])[:3])
                lines.append(f"  {what:<15} {mark}  {reasons}")
        self.emit(matrix, "\n".join(lines))
