from pathlib import Path

from apps.assembly import services
from apps.assembly.engine.lora_extract import ExtractionError
from apps.monitoring.foreground import ForegroundCommand


class Command(ForegroundCommand):
    help = "Extract a LoRA adapter from a (base, fine-tune) pair by truncated SVD."
    creates = True
    user_errors = (*ForegroundCommand.user_errors, ExtractionError)

    def add_arguments(self, parser):
        parser.add_argument("--base", required=True)
        parser.add_argument("--tuned", required=True)
        group = parser.add_mutually_exclusive_group(required=True)
        group.add_argument("--rank", type=int)
        group.add_argument("--energy", type=float, help="keep this share of the squared singular values")
        parser.add_argument("--name")
        parser.add_argument("--out", help="also write the adapter folder here")

    def handle(self, *args, base, tuned, rank, energy, name, out, **opts):
        version = services.lora_extract(base=base, tuned=tuned, rank=rank, energy=energy, name=name,
                                        owner=self.owner, out=Path(out).resolve() if out else None,
                                        reporter=self.progress("extract"))
        self.emit({"asset": version.asset.name, "version": version.number}, f"{version}")
