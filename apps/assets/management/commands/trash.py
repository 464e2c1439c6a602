from apps.assets import selectors, services
from apps.assets.models import Asset
from apps.monitoring.foreground import ForegroundCommand


class Command(ForegroundCommand):
    help = "Move assets to the trash, bring them back, list or empty it."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
        sub.add_parser("put").add_argument("name")
        sub.add_parser("restore").add_argument("name")
        sub.add_parser("list")
        sub.add_parser("empty")

    def handle(self, *args, action, **opts):
        if action in ("put", "restore"):
            asset = selectors.asset_get(name=opts["name"])
            if asset is None:
                raise LookupError(f"no asset named {opts['name']!r}")
            (services.asset_trash if action == "put" else services.asset_untrash)(asset=asset)
            self.emit({"asset": asset.name, "trashed": action == "put"},
                      f"{asset.name}: {'in the trash' if action == 'put' else 'back in the library'}")
        elif action == "list":
            names = list(Asset.objects.filter(trashed_at__isnull=False).values_list("name", flat=True))
            self.emit({"trash": names}, "\n".join(names) or "the trash is empty")
        else:
            n = services.trash_empty()
            self.emit({"deleted": n}, f"deleted {n} assets for good; `audobon gc` frees their blobs")
