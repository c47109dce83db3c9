"""The unit of work runs post-commit callbacks only after a commit (tasks are published for committed rows only)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.orm import sessionmaker

from models.db import make_engine
from models.migrate import upgrade
from models.uow import UnitOfWork


def test_after_commit_runs_once_after_the_commit_and_never_after_a_rollback(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'u.db'}"
    upgrade(url)
    engine = make_engine(url)
    factory = sessionmaker(engine)
    ran: list[str] = []
    with UnitOfWork(factory) as uow:
        uow.after_commit(lambda: ran.append("committed"))
        assert ran == []
        uow.commit()
        uow.commit()
    with UnitOfWork(factory) as uow:
        uow.after_commit(lambda: ran.append("rolled back"))
    engine.dispose()
    assert ran == ["committed"]
