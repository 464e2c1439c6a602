import pytest

from apps.monitoring.jobkinds import JOB_KINDS


@pytest.fixture
def user(django_user_model):
    return django_user_model.objects.create_user(username="ada", password="pw-ada-123456")


@pytest.fixture
def other_user(django_user_model):
    return django_user_model.objects.create_user(username="bob", password="pw-bob-123456")


@pytest.fixture
def temp_job_kind():
    """Register a job kind for one test and remove it afterwards."""
    added = []

    def register(kind):
        JOB_KINDS[kind.name] = kind
        added.append(kind.name)
        return kind

    yield register
    for name in added:
        JOB_KINDS.pop(name, None)


@pytest.fixture
def fresh_library(settings, tmp_path):
    """Point the library at an empty store (the database is per test anyway)."""
    home = tmp_path / "home2"
    (home / "store").mkdir(parents=True)
    (home / "work").mkdir()
    (home / "cache").mkdir()
    settings.AUDOBON_HOME = home
    return home
