"""``pydiffuse bench --sweep``: each sweep runs in quick mode on tiny shapes and gives rows with
eager, torch.compile and pydiffuse timings and their ratios; the command line runs a sweep."""

import math

import pytest

from pydiffuse import bench
from pydiffuse.bench import sweeps
from pydiffuse.bench.unet_shapes import UNET_SHAPES, _attn, _gn

TINY_UNET = [_gn((2, 32, 4, 4), "gn+silu tiny", "test", adagn=True),
             _gn((2, 32, 4, 4), "gn tiny cl bf16", "test", act=None,
                 memory_format="channels_last", dtype="bfloat16"),
             _attn((1, 2, 8, 32), (1, 2, 5, 32), "xattn tiny", "test")]


def _check_rows(report, labels, kernel):
    assert [r["label"] for r in report["rows"]] == labels
    for row in report["rows"]:
        assert not row["errors"], row
        names = ["eager", "compile", "pydiffuse"] + (["kernel"] if kernel else [])
        assert all(row[f"{n}_us"] > 0 for n in names), row
        assert math.isclose(row["x_eager"], row["eager_us"] / row["pydiffuse_us"])
        assert math.isclose(row["x_compile"], row["compile_us"] / row["pydiffuse_us"])
        assert ("kernel_x_eager" in row) == kernel
    table = sweeps.format_sweep(report)
    for label in labels:
        assert label in table
    assert "x eager" in table and "x compile" in table


def test_unet_sweep_quick_on_tiny_shapes():
    report = sweeps.run_sweep("unet", quick=True, device="cpu", entries=TINY_UNET)
    _check_rows(report, [e["label"] for e in TINY_UNET], kernel=True)


def test_shapes_sweep_quick_on_tiny_shapes():
    shapes = [(2, 4, 4, 4), (128,)]
    report = sweeps.run_sweep("shapes", quick=True, device="cpu", shapes=shapes,
                              op_names=("lincomb", "randn"))
    _check_rows(report, ["lincomb 2x4x4x4", "randn 2x4x4x4", "lincomb 128", "randn 128"],
                kernel=False)


def test_shapes_sweep_layouts_hold_the_same_element_count():
    for numel in (sweeps.SHAPES_NUMEL, sweeps.QUICK_SHAPES_NUMEL):
        shapes = sweeps.layouts(numel)
        assert [len(s) for s in shapes] == [4, 2, 2, 1]
        assert all(math.prod(s) == numel for s in shapes)
    assert sweeps.layouts(sweeps.SHAPES_NUMEL)[0] == (16, 4, 512, 512)


def test_unet_shapes_are_well_formed():
    for entry in UNET_SHAPES:
        assert entry["op"] in ("group_norm", "attention") and entry["label"]
        if entry["op"] == "group_norm":
            assert entry["shapes"]["x"][1] % entry["options"]["num_groups"] == 0
        else:
            q, kv = entry["shapes"]["q"], entry["shapes"]["kv"]
            assert q[:2] == kv[:2] and q[3] == kv[3]


def test_command_line_runs_a_sweep(monkeypatch, capsys):
    monkeypatch.setattr(sweeps, "UNET_SHAPES", TINY_UNET[:1])
    assert bench.main(["--sweep", "unet", "--quick", "--device", "cpu"]) == 0
    assert "gn+silu tiny" in capsys.readouterr().out


def test_command_line_refuses_a_plot_of_a_sweep(capsys):
    with pytest.raises(SystemExit):
        bench.main(["--sweep", "unet", "--quick", "--plot", "/tmp/x.png"])
    assert "--plot" in capsys.readouterr().err
