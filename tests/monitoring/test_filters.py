from apps.monitoring.templatetags.audobon import human_count, pretty


def test_human_count():
    assert human_count(22_713_728) == "22.7 M"
    assert human_count(70_553_706_496) == "70.6 B"
    assert human_count(512) == "512"
    assert human_count(None) == "—"


def test_pretty_facts():
    assert pretty({"tied": False, "reason": "own tensor"}) == "tied: no · reason: own tensor"
    assert pretty([1, 2]) == "1, 2"
    assert pretty(None) == pretty([]) == "—"
