"""The benchmarks run end to end on tiny inputs and write their tables (their figures are not checked here)."""

import json
import statistics

import pytest

from bench.variants import parse_variants
from cli.main import main as blockdrop
from tests.service.conftest import make_artifacts, save_slow_resnet110
from tests.training.conftest import write_cifar10


def test_executor_benchmark_writes_json_and_markdown(tmp_path):
    assert (
        blockdrop(
            [
                "bench",
                "executor",
                "--depth",
                "8",
                "--batch-sizes",
                "1,4",
                "--keep",
                "0.5",
                "--min-run-time",
                "0.01",
                "--rounds",
                "2",
                "--threads",
                "1",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    result = json.loads((tmp_path / "executor.json").read_text())
    assert result["rounds"] == 2
    assert [(r["batch"], r["keep_fraction"]) for r in result["rows"]] == [(1, 0.5), (4, 0.5)]
    for row in result["rows"]:  # both ratios come from the same rounds' executor / full
        assert row["executor_over_ideal"] * row["flops_ratio"] * row["speedup_vs_full"] == pytest.approx(1, rel=0.01)
    assert "| batch |" in (tmp_path / "executor.md").read_text()


def test_variants_benchmark_writes_json_and_markdown(tmp_path):
    artifacts = make_artifacts(tmp_path / "artifacts")
    data = write_cifar10(tmp_path / "data", per_batch=16)
    args = [
        "bench",
        "variants",
        "--data-root",
        str(data),
        "--latency-images",
        "4",
        "--throughput-batches",
        "1",
        "--threads",
        "1",
        "--out",
        str(tmp_path),
        "--variant",
        f"full={artifacts['tiny-resnet']}:full",
        "--variant",
        f"blockdrop={artifacts['tiny-blockdrop']}:blockdrop",
    ]
    assert blockdrop(args) == 0
    rows = json.loads((tmp_path / "variants.json").read_text())["rows"]
    assert set(rows) == {"full", "blockdrop"} and rows["full"]["latency_speedup"] == 1.0
    assert 0 <= rows["blockdrop"]["accuracy"] <= 1
    assert blockdrop(["bench", "variants", "--variant", "broken"]) == 2
    # @THRESHOLD overrides the artifact's threshold: every block kept at 0, the full network's FLOPs plus the policy's
    args[args.index(f"blockdrop={artifacts['tiny-blockdrop']}:blockdrop")] += "@0"
    assert blockdrop(args) == 0
    rows = json.loads((tmp_path / "variants.json").read_text())["rows"]
    assert rows["blockdrop"]["threshold"] == 0.0 and rows["blockdrop"]["flops_mean"] > rows["full"]["flops_mean"]


def test_variants_benchmark_repeats_give_medians_of_rounds(tmp_path):
    artifacts = make_artifacts(tmp_path / "artifacts")
    data = write_cifar10(tmp_path / "data", per_batch=16)
    common = ["bench", "variants", "--data-root", str(data), "--latency-images", "3", "--throughput-batches", "1"]
    common += ["--threads", "1", "--out", str(tmp_path), "--variant", f"full={artifacts['tiny-resnet']}:full"]
    common += ["--variant", f"blockdrop={artifacts['tiny-blockdrop']}:blockdrop"]
    assert blockdrop([*common, "--repeats", "3"]) == 0
    result = json.loads((tmp_path / "variants.json").read_text())
    assert result["repeats"] == 3
    full, dropped = result["rows"]["full"], result["rows"]["blockdrop"]
    for row in (full, dropped):
        for key in ("latency_p50_ms", "latency_p99_ms", "throughput_batch64"):
            assert len(row[f"{key}_each"]) == 3 and row[key] == statistics.median(row[f"{key}_each"])
    # speed-ups pair each round with the full variant's same round
    ratios = [f / d for f, d in zip(full["latency_p50_ms_each"], dropped["latency_p50_ms_each"])]
    assert dropped["latency_speedup"] == pytest.approx(statistics.median(ratios))
    assert full["latency_speedup"] == 1.0 and full["throughput_speedup"] == 1.0
    assert "median of 3 rounds" in (tmp_path / "variants.md").read_text()
    with pytest.raises(SystemExit) as refused:  # argparse's usage error
        blockdrop([*common, "--repeats", "0"])
    assert refused.value.code == 2


def test_variant_specs_parse_into_the_services_settings(tmp_path):
    variants = parse_variants(["a=/m/x:full", "b=/m/y:blockdrop", "c=/m:z:blockdrop@0.6"])
    assert [(v.name, str(v.artifact), v.mode, v.threshold) for v in variants.values()] == [
        ("a", "/m/x", "full", None),
        ("b", "/m/y", "blockdrop", None),
        ("c", "/m:z", "blockdrop", 0.6),
    ]
    for spec, message in [
        ("a=/m/x:full@0.5", "THRESHOLD only with blockdrop"),
        ("a=/m/x:blockdrop@1.5", "less than or equal to 1"),
        ("a=/m/x:blockdrop@high", "valid number"),
        ("a=/m/x", "expected NAME=ARTIFACT:MODE"),
        ("=/m/x:full", "expected NAME=ARTIFACT:MODE"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_variants([spec])


def test_results_table_renders_recorded_test_figures(tmp_path):
    from bench.results_table import render
    from models.artifacts import read_manifest, write_manifest

    artifacts = make_artifacts(tmp_path)
    (tmp_path / "tiny-resnet").rename(tmp_path / "cifar10-resnet32")
    (tmp_path / "tiny-blockdrop").rename(tmp_path / "cifar10-resnet32-blockdrop")
    (tmp_path / "tiny-biglittle").rename(tmp_path / "cifar10-blresnet")
    row = {"accuracy": 0.9, "blocks_mean": 2.0, "blocks_std": 0.5, "flops_mean": 1e7, "distinct_policies": 3}
    manifest = read_manifest(tmp_path / "cifar10-resnet32-blockdrop")
    manifest.metrics["test"] = {
        "k": 2,
        "threshold": 0.5,
        "rows": {"full": row, "first_k": row, "random_k": row, "blockdrop": row},
    }
    # went on twice from earlier versions: every earlier command is listed, newest first
    oldest = {"command": "blockdrop train policy"}
    earlier = {"command": "blockdrop train finetune --epochs 1", "earlier": oldest}
    manifest.training = {"train_seconds": 3600, "command": "blockdrop train finetune", "earlier": earlier}
    write_manifest(tmp_path / "cifar10-resnet32-blockdrop", manifest)
    table = render(tmp_path)
    assert "| cifar10-resnet32 | (no test figures recorded yet)" in table
    assert "| cifar10-resnet32-blockdrop | BlockDrop (threshold 0.5) | 90.00% | 2.00 ± 0.50 | 1e+07 |" in table
    chain = "1.00 h; `blockdrop train finetune`, after `blockdrop train finetune --epochs 1`"
    chain += ", after `blockdrop train policy`"
    assert "FirstK K=2" in table and chain in table
    # (2, 2, 2) blocks per stage: as deep as a ResNet-14, whose FLOPs the table measures for comparison
    assert "cifar10-blresnet has [2, 2, 2] blocks per stage, as deep as a ResNet-14" in table
    # a BlockDrop model whose backbone is not shipped beside it: that backbone's commands are listed too
    backbone = {"command": "blockdrop train backbone --random-drop 0.5", "train_seconds": 7200, "earlier": oldest}
    manifest.training = {"train_seconds": 1800, "command": "blockdrop train finetune", "started_from": "sd"}
    manifest.training["backbone_training"] = backbone
    write_manifest(tmp_path / "cifar10-resnet32-blockdrop", manifest)
    expected = "0.50 h; `blockdrop train finetune` (from `sd`; its backbone: 2.00 h over "
    expected += "`blockdrop train backbone --random-drop 0.5`, after `blockdrop train policy`)"
    assert expected in render(tmp_path)
    (tmp_path / "sd").mkdir()  # shipped beside it: its own row says how it was trained
    assert "0.50 h; `blockdrop train finetune` (from `sd`) |" in render(tmp_path)
    # adapted after that finetuning: the backbone is named in the earlier stage's record
    finetuned = manifest.training | {"started_from": "sd2"}
    manifest.training = {"train_seconds": 3600, "command": "blockdrop train adapt", "started_from": "ft"}
    manifest.training["earlier"] = finetuned
    write_manifest(tmp_path / "cifar10-resnet32-blockdrop", manifest)
    expected = "1.00 h; `blockdrop train adapt`, after `blockdrop train finetune` (from `ft`; its backbone `sd2`: "
    expected += "2.00 h over `blockdrop train backbone --random-drop 0.5`, after `blockdrop train policy`)"
    assert expected in render(tmp_path)
    assert artifacts  # the fixture's paths were moved above


def _wrk_bench(tmp_path, bench: str) -> list[str]:
    """The start of a short ``bench load`` / ``bench soak`` command over two tiny variants (skips without wrk)."""
    import shutil

    import pytest

    if shutil.which("wrk") is None:
        pytest.skip("needs wrk (Debian package 'wrk')")
    artifacts = make_artifacts(tmp_path / "artifacts")
    data = write_cifar10(tmp_path / "data", per_batch=8)
    return [
        "bench",
        bench,
        "--data-root",
        str(data),
        "--images",
        "4",
        "--variant",
        f"blockdrop={artifacts['tiny-blockdrop']}:blockdrop",
        "--variant",
        f"full={artifacts['tiny-resnet']}:full",
        "--out",
        str(tmp_path),
    ]


def test_load_benchmark_runs_every_setup(tmp_path):
    args = [*_wrk_bench(tmp_path, "load"), "--concurrency", "4", "--seconds", "1", "--warmup-seconds", "0"]
    args += ["--overhead-requests", "5", "--repeats", "2"]
    assert blockdrop(args) == 0
    result = json.loads((tmp_path / "load.json").read_text())
    setups = {(r["setup"], r["variant"], r["concurrency"]) for r in result["runs"]}
    assert len(setups) == 5  # 2 service setups x 2 variants + the baseline
    assert all(r["errors_5xx"] == 0 and r["requests_per_second"] > 0 for r in result["runs"])
    assert all(len(r["requests_per_second_each"]) == r["repeats"] == 2 for r in result["runs"])
    served = [r for r in result["runs"] if r["setup"].startswith("service")]
    assert all(r["cpu_ms_per_request"]["api_server"] > 0 for r in served)
    assert set(result["speedups"]) == {"blockdrop"} and set(result["speedups"]["blockdrop"]) == {"4"}
    assert "| blockdrop | " in (tmp_path / "load.md").read_text().split("against the `full` variant")[1]
    assert set(result["overhead"]) == {"blockdrop", "full"}


def test_repeated_load_runs_give_medians_and_paired_ratios():
    from bench.load import paired_speedups, summarise

    def run(rps: float, p50: float, statuses: dict[int, int]) -> dict:
        errors = sum(n for status, n in statuses.items() if status >= 500)
        percentiles = {"p50_ms": p50, "p95_ms": 2 * p50, "p99_ms": 3 * p50}
        return {"concurrency": 32, "requests_per_second": rps, **percentiles, "statuses": statuses,
                "errors_5xx": errors, "socket_errors": 1}  # fmt: skip

    full = summarise([run(100, 10, {200: 5}), run(200, 30, {200: 5}), run(120, 20, {200: 4, 503: 1})])
    assert full["requests_per_second"] == 120 and full["p50_ms"] == 20 and full["p99_ms"] == 60
    assert full["statuses"] == {200: 14, 503: 1} and full["errors_5xx"] == 1 and full["socket_errors"] == 3
    # the machine ran twice as fast during the second pair: ratios of runs taken in turn (1.5, 1.5, 1.25) cancel
    # that out, where the ratio of the medians (150 / 120) would not
    fast = summarise([run(150, 5, {200: 1}), run(300, 5, {200: 1}), run(150, 5, {200: 1})])
    assert fast["requests_per_second"] / full["requests_per_second"] == 1.25
    rows = [{"setup": "on", "variant": "full"} | full, {"setup": "on", "variant": "blockdrop"} | fast]
    rows.append({"setup": "off", "variant": "blockdrop"} | full)
    assert paired_speedups(rows, "on") == {"blockdrop": {"32": 1.5}}


def test_soak_short_version(tmp_path):
    args = [*_wrk_bench(tmp_path, "soak"), "--minutes", "0.1", "--phase-seconds", "2", "--concurrency", "4"]
    args += ["--burst-concurrency", "64", "--queue-limit", "2"]
    assert blockdrop(args) == 0
    result = json.loads((tmp_path / "soak.json").read_text())
    assert result["unexpected_5xx"] == {} and result["ready_after"] and result["socket_errors"] == 0
    assert result["load_statuses"].get("200", 0) > 0
    # the hostile requests of bench/hostile_inputs.py too: every one a client error, none a 5xx
    assert set(result["bad_input_statuses"]) <= {"400", "408", "413", "415", "422", "431"}
    # a 2-image queue refuses some steady requests too (503 with Retry-After); they are counted, never 5xx
    assert set(result["steady_statuses"]) <= {"200", "503"} and result["steady_unanswered"] >= 0


def test_hostile_short_version(tmp_path):
    """With two API servers: every repro, burst, slow body, the hung model server and the fork server's faults behave
    as in one process (whose hostile-input behaviour tests/service/test_hostile_input.py covers)."""
    args = [*_wrk_bench(tmp_path, "hostile"), "--idle-seconds", "1", "--overload-seconds", "2"]
    args += ["--header-timeout-s", "1", "--body-timeout-s", "1", "--slow-bodies", "4", "--api-servers", "2"]
    args += ["--stalled-grpc", "3"]
    # the hung variant a ResNet-110: its replacement loads long enough for the pinned request to land while it
    # is down (a tiny model's replacement could be up again before the bench noticed the hung one)
    (tmp_path / "slow").mkdir()
    slow = save_slow_resnet110(tmp_path / "slow")
    args += ["--variant", f"slow={slow}:full", "--hung-variant", "slow"]
    assert blockdrop(args) == 0
    result = json.loads((tmp_path / "hostile.json").read_text())
    assert result["api_servers"] == 2
    assert all(row["as_expected"] for row in result["repros"]), result["repros"]
    assert {row["case"] for row in result["repros"]} >= {"one 128 MB header", "half a header, then silence"}
    hung = result["hung_worker"]
    assert hung["not_ready_after_s"] is not None and hung["pinned_status"] == 503 and hung["hung_worker_killed"]
    assert hung["replaced_after_s"] > hung["not_ready_after_s"]
    assert set(result["overload"]["statuses"]) <= {"200", "503"}
    assert result["slow_bodies"]["statuses"] == {"408": 4}  # within the body budget: held until the body timeout
    stalled = result["stalled_grpc"]  # within the gRPC bounds: held until their connections' life is up
    assert (stalled["held"], stalled["refused"], stalled["declared_10_mib_refused"]) == (3, 0, True)
    assert stalled["all_closed_after_s"] is not None and stalled["small_infer_after"] == "OK"
    fork = result["fork_server"]  # stopped with a server lost, then killed
    assert fork["worker_back_after_s"] is not None and fork["stopped_fork_server_ended"]
    assert fork["servers"] == 5 and fork["servers_restarted_after_fork_server_killed"] == 0
    assert fork["servers_ended_after_fork_server_killed"] == 0
    assert "Hung worker" in (tmp_path / "hostile.md").read_text()


def test_startup_benchmark_times_start_and_replacement_against_a_baseline_checkout(tmp_path):
    import shutil

    from bench.load import ROOT

    artifacts = make_artifacts(tmp_path / "artifacts")
    if shutil.which("wrk") is None:
        pytest.skip("needs wrk (Debian package 'wrk')")
    args = ["bench", "startup", "--repeats", "1", "--settle-seconds", "0", "--baseline-checkout", str(ROOT)]
    args += ["--load-seconds", "1"]
    args += ["--variant", f"full={artifacts['tiny-resnet']}:full", "--out", str(tmp_path)]
    assert blockdrop(args) == 0
    result = json.loads((tmp_path / "startup.json").read_text())
    for name in ("this", "baseline"):
        assert result["runs"][name]["ready_s"][0] > 0 and result["runs"][name]["replaced_s"][0] > 0
    assert result["runs"]["this"]["pss_mib"][0] > 0
    assert set(result["baseline_over_this"]) == {"ready_s", "pss_mib", "replaced_s", "served_rps"}
    assert result["runs"]["baseline"]["served_rps"][0] > 0
    assert "worker killed" in (tmp_path / "startup.md").read_text()


def test_soak_reports_the_peak_memory_of_each_quarter():
    from bench.soak import quarter_peaks_mib

    mib = 1024
    series = [(0.0, 700 * mib), (10.0, 720 * mib), (30.0, 710 * mib), (59.0, 740 * mib), (80.0, 735 * mib)]
    assert quarter_peaks_mib(series) == [720.0, 710.0, 740.0, 735.0]
    assert quarter_peaks_mib([(0.0, 700 * mib), (80.0, 701 * mib)]) == [700.0, None, None, 701.0]


def test_protocols_benchmark_measures_every_protocol(tmp_path):
    args = _wrk_bench(tmp_path, "protocols")
    full = next(a for a in args if a.startswith("full="))
    args = [a for a in args if not a.startswith("blockdrop=")]
    args.remove("--variant")
    assert full in args
    args += ["--seconds", "1", "--repeats", "1", "--concurrency", "2"]
    assert blockdrop(args) == 0
    result = json.loads((tmp_path / "protocols.json").read_text())
    assert set(result["summary"]) == {"v1 PNG", "v2 JSON", "v2 binary", "v2 gRPC"}
    for protocol, row in result["summary"].items():
        assert row["requests_per_second"] > 0 and row["service_cpu_ms_per_request"] > 0, protocol
        assert all(set(statuses) <= {200, "200", "OK"} for statuses in row["statuses"]), protocol


def test_efficiency_benchmark_runs(tmp_path):
    args = [*_wrk_bench(tmp_path, "efficiency"), "--concurrency", "4", "--seconds", "1", "--repeats", "1"]
    args += ["--model-seconds", "0.2", "--warmup-seconds", "1", "--overhead-requests", "5", "--api-servers", "1,2"]
    assert blockdrop(args) == 0
    result = json.loads((tmp_path / "efficiency.json").read_text())
    assert set(result["model_alone"]) == {"blockdrop", "full"}
    # the reference variant served with 2 API servers too, in turns, with its CPU per request by kind of process
    assert set(result["summary"]["api_servers_over_first"]["api-servers=2"]) == {"4"}
    two = [r for r in result["served"]["runs"] if r["server"] == "api-servers=2"]
    assert {r["variant"] for r in two} == {"full"} and all(r["errors_5xx"] == 0 for r in two)
    assert all(r["cpu_ms_per_request"]["api_server"] > 0 and r["cpu_ms_per_request"]["model_worker"] > 0 for r in two)
    assert "Prediction, not a measurement" in (tmp_path / "efficiency.md").read_text()
    assert result["summary"]["variants"]["blockdrop"]["model_speedup_b32"] > 0
    assert all(row["img_per_s_b32_one_thread"] > 0 for row in result["model_alone"].values())
    assert result["summary"]["variants"]["full"]["one_thread_share_b32"] > 0
    assert "model b=32, 1 thread" in (tmp_path / "efficiency.md").read_text()


def test_efficiency_benchmark_refuses_a_reference_that_is_not_served(tmp_path):
    from tests.cli_refusal import refusal

    args = [*_wrk_bench(tmp_path, "efficiency"), "--reference", "full110"]
    assert "--reference 'full110' is not one of the variants ['blockdrop', 'full']" in refusal(args)


def test_the_calibration_plot_draws_every_calibrated_artifact(tmp_path):
    out = tmp_path / "calibration.svg"
    assert blockdrop(["bench", "calibration-plot", "--out", str(out)]) == 0
    svg = out.read_text()
    assert svg.startswith("<?xml") and "cifar10-resnet32-blockdrop" in svg and "shipped: threshold 0.575" in svg
    empty = tmp_path / "none"
    empty.mkdir()
    from tests.cli_refusal import refusal

    refused = refusal(["bench", "calibration-plot", "--checkpoints", str(empty), "--out", str(out)])
    assert "carries a calibration curve" in refused


def test_overload_benchmark_runs_fixed_and_adaptive(tmp_path):
    import shutil

    if shutil.which("wrk") is None:
        pytest.skip("needs wrk (Debian package 'wrk')")
    artifacts = make_artifacts(tmp_path / "artifacts")
    data = write_cifar10(tmp_path / "data", per_batch=8)
    args = ["bench", "overload", "--data-root", str(data), "--artifact", str(artifacts["tiny-blockdrop"])]
    args += ["--images", "8", "--connections", "8", "--seconds", "1", "--capacity-seconds", "1"]
    args += ["--tail-seconds", "1", "--out", str(tmp_path)]
    assert blockdrop(args) == 0
    result = json.loads((tmp_path / "overload.json").read_text())
    assert [p["factor"] for p in result["fixed"]["phases"]] == [0.5, 1.5, 0.5] == result["phases"]
    for label in ("fixed", "adaptive"):
        for phase in result[label]["phases"]:
            assert phase["answered"] > 0 and 0 <= phase["answered_within_slo"] <= phase["answered"]
            assert 0 <= phase["accuracy"] <= 1
    assert result["adaptive"]["threshold_series"] and "Live threshold" in (tmp_path / "overload.md").read_text()


@pytest.mark.ray
def test_ray_benchmark_compares_ray_serve_with_one_process(tmp_path):
    import shutil

    if shutil.which("wrk") is None:
        pytest.skip("needs wrk (Debian package 'wrk')")
    pytest.importorskip("ray")
    artifacts = make_artifacts(tmp_path / "artifacts")
    args = ["bench", "ray", "--artifact", str(artifacts["tiny-blockdrop"]), "--concurrency", "2", "--seconds", "1"]
    args += ["--repeats", "1", "--warmup-seconds", "1", "--out", str(tmp_path)]
    assert blockdrop(args) == 0
    result = json.loads((tmp_path / "ray.json").read_text())
    assert [row["setup"] for row in result["rows"]] == ["single process", "Ray Serve"]
    assert all(row["requests_per_second"] > 0 and row["non_2xx"] == 0 for row in result["rows"])
    assert set(result["ray_over_single"]) == {"2"}


def test_ab_simulation_writes_false_positive_rates_per_test(tmp_path):
    args = ["bench", "ab-simulation", "--experiments", "40", "--aa-feedback", "300", "--power-feedback", "400"]
    assert blockdrop([*args, "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "ab_simulation.json").read_text())
    assert set(result["aa_false_positive_rate"]) == {"z_test_peeking", "always_valid", "rollout_accuracy_guardrail"}
    assert all(0 <= rate <= 1 for rate in result["aa_false_positive_rate"].values())
    assert result["aa"]["always_valid"]["of"] == 40 and "mc_error" in result["aa"]["z_test_peeking"]
    assert set(result["power"]) == {"2_points", "5_points"}
    assert "within_400" in result["bad_variant_at_5_percent"] and result["non_inferior_ramp"]["reached_100"]["of"] == 40
    assert "within_400" in result["bad_variant_at_5_percent_two_sided"]
    assert result["error_guardrail_at_its_limit"]["violated"]["of"] == 40
    assert set(result["latency_guardrail"]["rows"]) == {"1.0", "1.3", "1.46", "1.5", "2.5"}
    assert "The other guardrails" in (tmp_path / "ab_simulation.md").read_text()
    assert "false-positive rate" in (tmp_path / "ab_simulation.md").read_text()


def test_the_simulations_vectorised_boundary_is_the_services():
    import numpy as np

    from bench.ab_simulation import half_width
    from service.sequential import half_width as scalar

    variances = np.array([1e-6, 1e-4, 7.3e-4, 0.01, 0.3])
    assert half_width(variances) == pytest.approx([scalar(v) for v in variances])
    # the one-sided width, interpolated between grid points, within 1e-5 of the service's bisection
    odd = np.array([3.3e-7, 2.2e-5, 7.3e-4, 0.0123, 0.31])
    assert half_width(odd, 0.05, 0.05, True) == pytest.approx([scalar(v, 0.05, 0.05, True) for v in odd], rel=1e-5)


def test_gpu_benchmark_smoke_run_on_the_cpu_writes_the_issues_schema(tmp_path):
    artifacts = make_artifacts(tmp_path / "artifacts")
    data = write_cifar10(tmp_path / "data", per_batch=24)
    pairs = ["--pair", f"tiny={artifacts['tiny-resnet']},{artifacts['tiny-blockdrop']}"]
    pairs += ["--pair", f"bl={artifacts['tiny-biglittle']}"]
    options = ["--batch-sizes", "1,5", "--precisions", "fp32,bf16", "--agreement-batch", "8", "--min-run-time", "0"]
    args = ["bench", "gpu", "--device", "cpu", "--data-root", str(data), *pairs, *options, "--out", str(tmp_path)]
    assert blockdrop(args) == 0
    result = json.loads((tmp_path / "gpu.json").read_text())
    assert result["gpu"].startswith("none: a CPU smoke run") and result["images"] == 24
    assert [(r["pair"], r["batch"]) for r in result["rows"]] == [("tiny", 1), ("tiny", 5), ("bl", 1), ("bl", 5)]
    for row in result["rows"]:
        assert {"full_tuned_ms", "blockdrop_engine_ms", "flops_ideal", "full_eager_fp32_ms"} <= row.keys()
        assert row["full_tuned_ms"] <= row["full_eager_fp32_ms"]
    tiny = result["rows"][0]
    assert tiny["blockdrop_engine_ms"] > 0 and tiny["blockdrop_eager_ms"] > 0 and tiny["flops_ideal"] > 0
    assert result["rows"][2]["blockdrop_engine_ms"] is None  # a static network has no BlockDrop
    for precision in ("fp32", "bf16"):
        assert 0 <= result["agreement"][precision]["mask"] <= 1 and 0 <= result["agreement"][precision]["top1"] <= 1
    assert result["agreement"]["fp32"]["mask"] == result["agreement"]["fp32"]["top1"] == 1.0  # fp32 on the CPU itself
    assert "| pair | batch |" in (tmp_path / "gpu.md").read_text()


def test_gpu_benchmark_runs_blockdrop_at_its_artifacts_threshold(tmp_path):
    import torch

    from bench.gpu import served_model
    from training.data import Normalizer, load_cifar

    artifacts = make_artifacts(tmp_path / "artifacts")
    manifest_path = artifacts["tiny-blockdrop"] / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["defaults"]["threshold"] = 0.52  # the served threshold, not infer's default of 0.5
    manifest_path.write_text(json.dumps(manifest))
    data = write_cifar10(tmp_path / "data", per_batch=24)
    pairs = ["--pair", f"tiny={artifacts['tiny-resnet']},{artifacts['tiny-blockdrop']}"]
    options = ["--batch-sizes", "4", "--agreement-batch", "8", "--min-run-time", "0"]
    assert (
        blockdrop(
            ["bench", "gpu", "--device", "cpu", "--data-root", str(data), *pairs, *options, "--out", str(tmp_path)]
        )
        == 0
    )
    result = json.loads((tmp_path / "gpu.json").read_text())
    assert result["thresholds"] == {"tiny": 0.52} and "thresholds tiny 0.52" in (tmp_path / "gpu.md").read_text()

    test = load_cifar(str(data), "test")
    model = served_model(artifacts["tiny-blockdrop"], torch.device("cpu"), "fp32")
    x = Normalizer(manifest["input"]["mean"], manifest["input"]["std"])(test.images)

    def flops_ideal(threshold: float) -> float:
        flops = model.flops_table.per_image(model.infer(x, threshold=threshold).keep_mask, include_policy=True)
        return round(model.flops_table.full / flops.double().mean().item(), 3)

    assert flops_ideal(0.52) != flops_ideal(0.5)  # else this test could not tell the two apart
    assert result["rows"][0]["flops_ideal"] == flops_ideal(0.52)


def test_gpu_benchmark_reports_a_failure_with_cuda_graphs_and_times_the_engine_without_them(monkeypatch):
    import argparse

    import torch

    import bench.gpu as gpu
    from tests.models.test_engine import _tiny_blockdrop

    def refused(*args, **kwargs):
        raise RuntimeError("operation not permitted when stream is capturing\nmore detail")

    monkeypatch.setattr(gpu, "_time_graphs", refused)
    args = argparse.Namespace(min_run_time=0, capture_budget=1.0)
    batches = [torch.randn(2, 3, 32, 32) for _ in range(3)]
    errors: list[str] = []
    times = gpu._time_network("blockdrop", _tiny_blockdrop(8), "fp32", batches, 0.5, args, errors, graphs=True)
    assert errors == ["blockdrop fp32 with CUDA graphs: operation not permitted when stream is capturing"]
    assert times["blockdrop engine fp32"] > 0 and times["blockdrop eager fp32"] > 0
    assert not any("graph" in key for key in times)
    row = {"pair": "r32", "batch": 2, "errors": errors, "full_eager_fp32_ms": 1.0, "full_tuned_ms": 1.0}
    row |= {"full_tuned_config": "full eager fp32", "blockdrop_eager_ms": 1.0, "blockdrop_engine_ms": 1.0}
    row |= {"blockdrop_engine_config": "blockdrop engine fp32", "engine_over_full_tuned": 1.0, "flops_ideal": 1.0}
    result = {"gpu": "x", "torch": "t", "cuda_graphs": True, "precisions": ["fp32"], "images": 2, "rows": [row]}
    assert "- r32 batch 2: blockdrop fp32 with CUDA graphs: operation not permitted" in gpu.to_markdown(
        result | {"agreement": {}}
    )


def test_gpu_benchmark_starts_the_batch_1_signature_cache_from_the_artifacts_frequent_masks(tmp_path, monkeypatch):
    """The CUDA-only steps (capture, prefill) stubbed: at batch 1 the engine is prefilled as the service does and
    timed from there; at a larger batch its cache learns from one pass over the stream first."""
    import argparse

    import torch

    import bench.gpu as gpu
    from models import load_artifact
    from models.engine import BucketedEngine, CaptureReport
    from training.masks import frequent_masks_record

    model = load_artifact(make_artifacts(tmp_path)["tiny-blockdrop"])
    drawn = torch.tensor([[1, 1, 0], [1, 0, 1], [1, 1, 0]], dtype=torch.bool)
    model.manifest.frequent_masks = frequent_masks_record(drawn, model.manifest.threshold, top=8)
    prefilled = []
    monkeypatch.setattr(BucketedEngine, "capture", lambda self, **kwargs: CaptureReport(seconds=0.5))
    monkeypatch.setattr(BucketedEngine, "prefill_signatures", lambda self, masks, budget: prefilled.append(masks) or 2)
    args = argparse.Namespace(min_run_time=0, capture_budget=5.0, signature_graphs=4)
    for batch in (1, 2):
        batches = [torch.randn(batch, 3, 32, 32) for _ in range(3)]
        engine = BucketedEngine(model, batch)
        times = gpu._time_graphs("blockdrop", engine, engine.infer, "policy", "fp32", batches, args)
        assert times["blockdrop sgraph fp32"] > 0 and engine.signatures.lookups == 0  # timed on a CPU: no lookups
        if batch == 1:
            assert times["signature prefilled fp32"] == 2 and prefilled[0].tolist() == [[1, 1, 0], [1, 0, 1]]
        else:
            assert "signature prefilled fp32" not in times and len(prefilled) == 1


def test_gpu_markdown_breaks_the_engine_down_by_way_of_replaying_it():
    from bench.gpu import _engine_breakdown

    timings = {"blockdrop graph fp32": 2.0, "blockdrop graph bf16": 1.5, "blockdrop sgraph bf16": 1.0}
    timings |= {"blockdrop sgraph fp32": 1.2, "signature hit rate bf16": 0.865, "signature prefilled bf16": 1024}
    rows = [{"pair": "r110", "batch": 1, "timings": timings}, {"pair": "r32", "batch": 8, "timings": {}}]
    lines = _engine_breakdown(rows)
    assert lines[-1] == "| r110 | 1 | 1.50 ms (bf16) | 1.00 ms (bf16) | 86.5% | 1024 |" and len(lines) == 6
    assert _engine_breakdown([rows[1]]) == []  # a CPU smoke run captures nothing: no table


def test_signatures_benchmark_counts_what_each_cache_rule_would_replay(tmp_path):
    from bench.signatures import by_frequency, by_recency

    artifacts = make_artifacts(tmp_path / "artifacts")
    data = write_cifar10(tmp_path / "data", per_batch=24)
    # the artifact's frequent masks on its training images: the cache at batch 1 starts with them
    record = ["record-masks", str(artifacts["tiny-blockdrop"]), "--data-root", str(data), "--val-size", "20"]
    assert blockdrop(record) == 0
    args = ["bench", "signatures", "--data-root", str(data), "--policy", str(artifacts["tiny-blockdrop"])]
    assert blockdrop([*args, "--batch-sizes", "1,5", "--capacities", "2,8", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "signatures.json").read_text())
    assert [(r["batch"], r["batches"]) for r in result["rows"]] == [(1, 24), (5, 4)] and result["images"] == 24
    for row in result["rows"]:
        assert 1 <= row["distinct"] <= row["batches"] and [c["capacity"] for c in row["caches"]] == [2, 8]
        assert all(0 <= c["hit_rate"] <= 1 and 0 <= c["hit_rate_by_recency"] <= 1 for c in row["caches"])
    prefilled = [c["hit_rate_prefilled"] for row in result["rows"] for c in row["caches"]]
    assert all(0 <= rate <= 1 for rate in prefilled[:2]) and prefilled[2:] == [None, None]  # batch 1 only
    assert "| policy | batch |" in (tmp_path / "signatures.md").read_text()
    # prefilled keys are hits from their first sighting; learnt ones only from their third
    assert by_frequency([("a",), ("b",), ("a",)], 2, prefill=[("a",)]) == (2 / 3, 1)
    assert by_frequency([("a",), ("b",), ("a",)], 2) == (0.0, 1)
    # two common signatures among passing ones seen twice each: recency keeps swapping them out, frequency not
    keys = [("a",), ("b",)] * 3 + [key for i in range(20) for key in [(i,), (i,), ("a",), ("b",)]]
    assert by_frequency(keys, 2)[0] > 0.45 > by_recency(keys, 2)[0]
    assert by_frequency(keys, 2)[1] == 2 < by_recency(keys, 2)[1]


def test_gpu_benchmark_says_which_of_the_issues_targets_it_met():
    from bench.gpu import targets, to_markdown

    def row(pair: str, batch: int, ratio: float | None) -> dict:
        return {"pair": pair, "batch": batch, "engine_over_full_tuned": ratio}

    rows = [row("r110", 1, 1.6), row("r110", 8, 0.5), row("r32", 256, 1.0), row("r110", 256, None)]
    pairs = {"r32": {"full": {"accuracy": 0.9, "accuracy_fp32_cpu": 0.9005}}}
    agreement = {
        "fp32": {"mask": 1.0, "top1": 1.0, "pairs": {}},
        "bf16": {"mask": 0.999, "top1": 0.994, "pairs": pairs},
    }
    got = {t["target"]: (t["got"], t["met"]) for t in targets({"rows": rows, "agreement": agreement})}
    assert got == {
        "r110 batch 1: engine / full tuned": (1.6, True),
        "r32 batch 256: engine / full tuned": (1.0, False),
        "r110 batch 256: engine / full tuned": (None, False),
        "bf16: mask agreement, lowest": (0.999, True),
        "bf16: top1 agreement, lowest": (0.994, False),
        "bf16: accuracy change, largest": (0.0005, True),
    }
    result = {"gpu": "H200", "torch": "2.11", "cuda_graphs": True, "precisions": ["fp32", "bf16"], "images": 2}
    result |= {"rows": [], "agreement": agreement, "targets": targets({"rows": rows, "agreement": agreement})}
    markdown = to_markdown(result)
    assert "| r110 batch 1: engine / full tuned | ≥ 1.5 | 1.6 | yes |" in markdown
    assert "| bf16: accuracy change, largest | ≤ 0.001 | 0.0005 | yes |" in markdown


def test_gpu_benchmark_on_a_cpu_never_writes_the_shipped_gpu_results():
    from tests.cli_refusal import refusal

    assert "give --out" in refusal(["bench", "gpu", "--device", "cpu"])


def test_compiled_benchmark_times_blockdrop_against_the_full_network_compiled(tmp_path):
    import shutil

    if shutil.which("g++") is None and shutil.which("c++") is None:
        pytest.skip("torch.compile on the CPU needs a C++ compiler")
    artifacts = make_artifacts(tmp_path / "artifacts")
    pair = f"tiny={artifacts['tiny-resnet']},{artifacts['tiny-blockdrop']}"
    args = ["bench", "compiled", "--pair", pair, "--batch-sizes", "1,3", "--rounds", "2", "--min-run-time", "0"]
    assert blockdrop([*args, "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "compiled-cpu.json").read_text())
    assert [(r["pair"], r["batch"]) for r in result["rows"]] == [("tiny", 1), ("tiny", 3)]
    for row in result["rows"]:
        assert row["max_logit_difference"] < 1e-3  # the compiled network computes what the served one does
        assert row["compile_s"] > 0 and row["full_compiled_ms"] > 0 and row["blockdrop_eager_ms"] > 0
        # the three ratios come from the same rounds: BlockDrop over compiled = over eager / compiled over eager
        implied = row["blockdrop_over_full_eager"] / row["compiled_over_eager"]
        assert row["blockdrop_over_full_compiled"] == pytest.approx(implied, rel=0.5)
    assert "BlockDrop over full compiled" in (tmp_path / "compiled-cpu.md").read_text()


def test_engine_benchmark_compares_the_two_executors(tmp_path):
    args = ["bench", "engine", "--batch-sizes", "1,3", "--rounds", "1", "--min-run-time", "0", "--threads", "1"]
    assert blockdrop([*args, "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "engine-cpu.json").read_text())
    assert [r["batch"] for r in result["rows"]] == [1, 3]
    assert all(r["plain_ms"] > 0 and r["bucketed_ms"] > 0 and r["bucketed_over_plain"] > 0 for r in result["rows"])


@pytest.mark.parametrize(
    ("script", "runs"),
    [
        ("gpu_check.sh", ["bench gpu --device cuda"]),
        ("api_servers_check.sh", ["bench efficiency", "--api-servers 1,4,8"]),
    ],
)
def test_a_prepared_device_check_is_valid_bash_and_names_what_exists(script, runs):
    import re
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    common, path = root / "bench" / "device" / "common.sh", root / "bench" / "device" / script
    assert subprocess.run(["bash", "-n", str(path)], check=False).returncode == 0
    text = path.read_text()
    for test_file in re.findall(r"tests/\S+\.py", text):
        assert (root / test_file).is_file(), test_file
    for checkpoint in re.findall(r"cifar10-[\w-]+", text):
        assert (root / "models" / "checkpoints" / checkpoint).is_dir(), checkpoint
    assert all(run in text for run in runs)
    assert 'source "$(dirname "$0")/common.sh"' in text and "source .device/on-device.sh" in common.read_text()
