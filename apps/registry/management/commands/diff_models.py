from pathlib import Path

from apps.monitoring.foreground import ForegroundCommand
from apps.registry import services


class Command(ForegroundCommand):
    help = "Layer-by-layer difference of two compatible models, as a heatmap and a report asset."
    creates = True
    user_errors = (*ForegroundCommand.user_errors, services.HeaderError)

    def add_arguments(self, parser):
        parser.add_argument("a", metavar="A", help="path or NAME[@VERSION]")
        parser.add_argument("b", metavar="B")
        parser.add_argument("--out", help="also write the heatmap PNG here")

    def handle(self, *args, a, b, out, **opts):
        version = services.models_diff(a=a, b=b, owner=self.owner, out=Path(out).resolve() if out else None,
                                       reporter=self.progress("diff"))
        import json

        data = json.loads(services.version_text(version, "diff.json"))
        top = sorted(data["tensors"], key=lambda t: -t["rel_l2"])[:10]
        lines = [f"report {version} (max relative L2 {data['max_rel_l2']:.4g})"]
        lines += [f"  {t['name']:<60} rel_l2 {t['rel_l2']:.4g}  cos {t['cosine']:.6f}" for t in top]
        if out:
            lines.append(f"heatmap written to {out}")
        self.emit({"report": str(version), "max_rel_l2": data["max_rel_l2"],
                   "top": top, "skipped": data["skipped"]}, "\n".join(lines))
