from apps.assets import services
from apps.assets.models import RecoveryPoint
from apps.monitoring.foreground import ForegroundCommand


class Command(ForegroundCommand):
    help = "Create, list or restore recovery points (snapshots of every asset's head)."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
        sub.add_parser("create").add_argument("name")
        sub.add_parser("list")
        sub.add_parser("restore").add_argument("name")

    def handle(self, *args, action, **opts):
        if action == "create":
            point = services.recovery_point_create(name=opts["name"])
            self.emit({"name": point.name, "assets": len(point.heads)},
                      f"recovery point {point.name!r}: {len(point.heads)} assets")
        elif action == "list":
            points = [{"name": p.name, "assets": len(p.heads), "created_at": p.created_at}
                      for p in RecoveryPoint.objects.all()]
            self.emit({"recovery_points": points},
                      "\n".join(f"{p['created_at']:%Y-%m-%d %H:%M}  {p['name']}  ({p['assets']} assets)"
                                for p in points) or "no recovery points")
        else:
            point = RecoveryPoint.objects.filter(name=opts["name"]).first()
            if point is None:
                raise LookupError(f"no recovery point named {opts['name']!r}")
            result = services.recovery_point_restore(point=point)
            self.emit(result, f"restored {len(result['restored'])} assets, moved "
                              f"{len(result['trashed'])} newer ones to the trash, "
                              f"{result['unchanged']} unchanged")
