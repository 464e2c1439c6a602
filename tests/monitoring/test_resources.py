"""Resource samples: raw for an hour, then one row of means a minute, gone after a week;
the dashboard charts them."""

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from apps.monitoring import services
from apps.monitoring.models import ResourceSample

pytestmark = pytest.mark.django_db


def _sample(at, cpu, ram=4 * 2**30, gpus=()):
    return ResourceSample.objects.create(created_at=at, cpu_percent=cpu, ram_used=ram, ram_total=16 * 2**30,
                                         disk_free=100 * 2**30, disk_total=200 * 2**30, gpus=list(gpus))


def test_old_raw_samples_fold_into_minute_means_and_week_old_rows_go():
    now = timezone.now().replace(second=30, microsecond=0)
    start = (now - timedelta(hours=2)).replace(second=0)
    for minute in range(3):  # 30 samples a minute, 2 s apart, CPU 10, 20, 30 % by minute
        for i in range(30):
            gpu = [{"index": 0, "name": "g", "util_percent": 50.0 + minute, "mem_used_mb": 100.0 * (i % 2),
                    "mem_total_mb": 1000.0, "temp_c": 60.0}]
            _sample(start + timedelta(minutes=minute, seconds=2 * i), cpu=10.0 * (minute + 1), gpus=gpu)
    recent = _sample(now - timedelta(minutes=10), cpu=99.0)
    _sample(now - timedelta(days=8), cpu=1.0)

    done = services.resources_compact(now=now)
    assert done == {"folded": 90, "minutes": 3, "deleted": 1}
    minutes = list(ResourceSample.objects.filter(resolution=60).order_by("created_at"))
    assert [m.created_at for m in minutes] == [start + timedelta(minutes=k) for k in range(3)]
    assert [m.cpu_percent for m in minutes] == pytest.approx([10.0, 20.0, 30.0])
    assert minutes[0].gpus[0]["util_percent"] == 50.0 and minutes[0].gpus[0]["mem_used_mb"] == 50.0
    assert ResourceSample.objects.filter(resolution=0).get() == recent  # the last hour stays raw
    assert services.resources_compact(now=now) == {"folded": 0, "minutes": 0, "deleted": 0}


def test_the_dashboard_charts_the_last_hour_and_week(client, user):
    client.force_login(user)
    now = timezone.now()
    for i in range(20):
        _sample(now - timedelta(minutes=i), cpu=float(i))
    page = client.get(reverse("monitoring:dashboard")).content.decode()
    assert 'id="resource-hour"' in page and "CPU %" in page and "RAM %" in page
    assert "<polyline" in page or "<path" in page
