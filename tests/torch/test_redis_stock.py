"""Stock torch, with no cas installed, uses a cas server as its remote cache through the
Redis door: only environment variables are set in the client, whose misses are recorded
as a commit and then hit by the next fresh process (a new machine: empty cache dir and
empty TMPDIR).

The recording client compiles livekit's MLP, which the session's ``recorded`` run already
built with the same compiler: it starts from that run's C++ kernels and precompiled
header (code only, no FX or AOT entries), so it misses every FX and AOT lookup without
waiting on g++. The new machine gets nothing of the kind."""

from __future__ import annotations

import sysconfig
from pathlib import Path

import livekit
import pytest
from livekit import SHARES_RECORDED, Recorded, recorded
from server.rediskit import run_fresh, wait_until
from servers import CasServer
from torchkit import seed_kernels

from cas import manifest
from cas.refs import load_commit, resolve
from cas.server.auth import Scope, add_token
from cas.store import Store

pytestmark = SHARES_RECORDED

# Run as `python -I -S client.py SITE`: no site processing, so the editable install of cas
# (a .pth hook) is not seen; SITE (the venv's site-packages) is added by hand for torch
# and redis. The script checks that cas really is not importable.
CLIENT = r'''
import sys
sys.path.append(sys.argv[1])
import importlib.util, json, warnings
warnings.filterwarnings("ignore")
cas_found = importlib.util.find_spec("cas") is not None
import torch
from torch import nn
from torch._dynamo.utils import counters
torch.manual_seed(0)
net = nn.Sequential(nn.Linear(32, 48), nn.ReLU(), nn.Linear(48, 10))
x = torch.randn(8, 32)
out = torch.compile(net)(x)
out.sum().backward()
grads = [p.grad.clone() for p in net.parameters()]
net.zero_grad()
want = net(x)
want.sum().backward()
err = max([float((out - want).abs().max())] +
          [float((g - p.grad).abs().max()) for g, p in zip(grads, net.parameters())])
print("RESULT " + json.dumps({"cas_found": cas_found, "max_err": err,
                              "counters": {k: dict(counters[k]) for k in ("inductor", "aot_autograd")}}))
'''


def _client(tmp: Path, port: int, token: str, seed: Recorded | None = None) -> dict:
    env = {
        "TORCHINDUCTOR_CACHE_DIR": str(tmp / "cache"),
        "TORCHINDUCTOR_REDIS_URL": f"redis://:{token}@127.0.0.1:{port}",
        "TORCHINDUCTOR_FX_GRAPH_REMOTE_CACHE": "1",
        "TORCHINDUCTOR_AUTOGRAD_REMOTE_CACHE": "1",
    }
    if seed is not None:  # the recording side: the session's C++ build of this model
        assert livekit.TMPDIR is not None
        env.update(TORCHINDUCTOR_CACHE_DIR=str(seed_kernels(seed.cache_dir, tmp / "seeded-cache")),
                   TMPDIR=str(livekit.TMPDIR))
    got = run_fresh(tmp, CLIENT, env, sysconfig.get_paths()["purelib"])
    assert got["max_err"] < 1e-4
    return got["counters"]


@pytest.mark.slow
def test_stock_torch_misses_are_recorded_then_hit_by_a_fresh_process(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    rec = recorded(tmp_path_factory)
    path = tmp_path / "store"
    with Store.init(path) as s:
        write = add_token("ci-writer", Scope.WRITE, store=s)
        read = add_token("fleet", Scope.READ, store=s)
    server = CasServer(
        path, tmp_path, "--redis-port", "0", "--redis-env", "here", "--redis-flush-every", "0.2"
    )
    port = server.redis_port
    assert port is not None
    try:
        first = _client(tmp_path / "first", port, write, seed=rec)
        assert first["inductor"].get("fxgraph_cache_miss", 0) >= 1
        assert first["aot_autograd"].get("autograd_cache_miss", 0) >= 1
        assert first["inductor"].get("fxgraph_cache_hit", 0) == 0

        assert {"inductor", "aot_autograd"} <= _recorded_kinds(path)

        second = _client(tmp_path / "second", port, read)
        assert second["inductor"].get("fxgraph_cache_hit", 0) >= 1
        assert second["aot_autograd"].get("autograd_cache_hit", 0) >= 1
        assert second["inductor"].get("fxgraph_cache_miss", 0) == 0
        assert second["aot_autograd"].get("autograd_cache_miss", 0) == 0
    finally:
        server.stop()


def _recorded_kinds(path: Path) -> set[str]:
    """The kinds on main once the door's batch commits of the client's FX and AOTAutograd
    entries land; they name the writer."""

    def landed() -> set[str] | None:
        with Store(path) as s:
            if s.refs.get("refs/heads/main") is None:
                return None
            commit = load_commit(s, resolve(s, "main"))
            assert commit.metadata["token"] == "ci-writer"
            kinds = {k.kind for k, _ in manifest.entries(s, commit.manifest)}
            return kinds if {"inductor", "aot_autograd"} <= kinds else None

    return wait_until(landed, "committed the client's inductor and aot_autograd entries")
