import pytest

from apps.monitoring.jobkinds import JOB_KINDS


@pytest.fixture
def user(django_user_model):
    """The one account of a single-user home, as `audobon up` makes it: an admin, who owns
    what commands made before it existed and sees everything."""
    return django_user_model.objects.create_superuser(username="ada", password="pw-ada-123456")


@pytest.fixture
def other_user(django_user_model):
    """A second person on a LAN server: not an admin."""
    return django_user_model.objects.create_user(username="bob", password="pw-bob-123456")


@pytest.fixture
def third_user(django_user_model):
    return django_user_model.objects.create_user(username="cy", password="pw-cy-1234567")


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
