"""Hosts starting together on an empty database all get a working storage."""

from __future__ import annotations

import subprocess
import uuid

import pytest
import sqlalchemy as sa

from studyhall.storage import connect
from tests._util import python

CONNECTOR = """
import os, sys, time
go = sys.argv[2]
while not os.path.exists(go):  # start every process's connect() at the same moment
    time.sleep(0.005)
from studyhall.storage import connect
st = connect(sys.argv[1])
print(st.now() > 0)
"""


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "postgresql", "mysql"])
def test_four_processes_create_the_schema_at_once(request, backend, tmp_path):
    base = request.getfixturevalue(f"{backend}_url")
    fresh = f"fresh_{uuid.uuid4().hex[:8]}"
    admin = None
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'fresh.db'}"
    elif backend == "postgresql":
        admin_url = base.split("?")[0]
        admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.exec_driver_sql(f"CREATE SCHEMA {fresh}")
        url = f"{admin_url}?options=-csearch_path%3D{fresh}"
    else:
        admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.exec_driver_sql(f"CREATE DATABASE {fresh}")
        url = base.rsplit("/", 1)[0] + f"/{fresh}"
    go = tmp_path / "go"
    procs: list[subprocess.Popen[str]] = []
    try:
        procs = [
            python(CONNECTOR, url, str(go), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)
        ]
        go.touch()
        results = [p.communicate(timeout=90) for p in procs]
        for p, (out, err) in zip(procs, results):
            assert p.returncode == 0, err[-2000:]
            assert out.strip() == "True"
        st = connect(url)
        assert "studyhall_trial_metrics" in sa.inspect(st.engine).get_table_names()
        st.close()
    finally:
        for p in procs:  # a failure above must not leave processes for a later test to reap
            if p.poll() is None:
                p.kill()
                p.communicate()
        if admin is not None:
            with admin.connect() as c:
                c.exec_driver_sql(
                    f"DROP SCHEMA {fresh} CASCADE" if backend == "postgresql" else f"DROP DATABASE {fresh}"
                )
            admin.dispose()
