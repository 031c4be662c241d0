"""`tsd bench generate --size tiny` runs on the CPU, prints the ratio lines and writes positive numbers."""
import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"

from pipeline import cli  # noqa: E402


def test_tiny_bench_prints_ratios_and_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert cli.main(["bench", "generate", "--size", "tiny", "--batch", "2", "--steps", "2", "--images", "2", "--device", "cpu",
                      "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "ratio fused / stock-1:" in printed and "ratio fused / stock-batched:" in printed
    res = json.loads(out.read_text())
    assert (res["size"], res["batch"], res["steps"], res["images"], res["device"]) == ("tiny", 2, 2, 2, "cpu")
    for key in ("stock_1_img_per_s", "stock_batched_img_per_s", "fused_img_per_s", "fused_over_stock_1",
                "fused_over_stock_batched", "peak_tflops", "flop_limit_img_per_s", "fused_fraction_of_limit"):
        assert res[key] > 0, key
    assert res["flops"]["unet_call_gflop"] > 0 and res["flops"]["vae_decode_gflop"] > 0
    assert res["flops"]["unet_calls"] == 4   # 2 steps × 2 CFG branches
    assert res["teacher"]["img_per_s"] > 0 and res["teacher"]["gflop_per_image"] > 0
