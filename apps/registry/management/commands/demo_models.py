from apps.monitoring.foreground import ForegroundCommand
from apps.registry import services


class Command(ForegroundCommand):
    help = "Register the demo models: the real MiniLM, and a small seeded Llama family."

    def handle(self, *args, **opts):
        result = services.demo_models_register(reporter=self.progress("demo models"))
        found = sum(r["found"] for r in result.values())
        self.emit(result, f"{found} demo models registered")
