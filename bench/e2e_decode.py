"""End-to-end decode step: torch.compile alone against torch.compile + tpfuse, in CUDA graphs.

Models (transformers' code, random weights, sharded for TP like row-parallel linears, see
python/tests/tp_models.py):
  llama8b      Llama-3.1-8B shape: 32 layers, H 4096, FFN 14336, 32 heads, 8 KV heads, bf16
  deepseek     a DeepSeek-V3-shaped dense stack (H 7168, FFN 18432, MLA), the block inputs
               quantized per group of 128 in torch (FP8 e4m3, amax / 448) with the indexer GEMM
               on the norm output; --deepseek-layers of the 61 (memory)

Each step is one decode token per sequence (batch 1, 8, 64) through the whole layer stack with an
empty KV cache (attention over the new token only): the GEMMs, the all_reduces and the norm
chains of a real step, which is what the fusion changes. Both variants are compiled with
mode="reduce-overhead" (CUDA graphs); the timing is CUDA events around --iters replays after
warm-up, median over --repeats, and the outputs of the two are compared on every rank.

    torchrun --nproc-per-node 2 bench/e2e_decode.py            # TP 2
    python bench/e2e_decode.py --world-size 1                  # one GPU (world-size-1 fused op)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

import torch
import torch.distributed as dist

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "python", "tests"))
sys.path.insert(0, os.path.join(HERE, "..", "python"))

import tp_models  # noqa: E402
import tpfuse.torch as tt  # noqa: E402


def make_config(name: str, deepseek_layers: int):
    import transformers as tf

    if name == "llama8b":
        return tf.LlamaConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                              num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                              vocab_size=128256, rms_norm_eps=1e-5, max_position_embeddings=8192,
                              tie_word_embeddings=False)
    if name == "deepseek":
        return tf.DeepseekV3Config(hidden_size=7168, intermediate_size=18432,
                                   num_hidden_layers=deepseek_layers, num_attention_heads=128,
                                   num_key_value_heads=128, q_lora_rank=1536, kv_lora_rank=512,
                                   qk_rope_head_dim=64, qk_nope_head_dim=128, v_head_dim=128,
                                   vocab_size=129280, rms_norm_eps=1e-6,
                                   first_k_dense_replace=deepseek_layers, n_routed_experts=8,
                                   num_experts_per_tok=2, n_group=1, topk_group=1,
                                   moe_intermediate_size=2048, tie_word_embeddings=False)
    raise ValueError(name)


def build(name: str, rank: int, world: int, deepseek_layers: int, device) -> torch.nn.Module:
    import transformers as tf

    config = make_config(name, deepseek_layers)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(device):
        model = tf.AutoModel.from_config(config, dtype=torch.bfloat16).eval()
        gen = torch.Generator(device=device).manual_seed(1)
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() == 1:
                    p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen, device=device))
                else:
                    p.normal_(0, 0.02, generator=gen)
        if name == "deepseek":
            for layer in model.layers:
                layer.self_attn = tp_models.QuantizedInput(layer.self_attn, "group",
                                                           config.hidden_size, indexer=True)
                layer.mlp = tp_models.QuantizedInput(layer.mlp, "group", config.hidden_size,
                                                     indexer=False)
            model.to(device)
    tp_models.shard_for_tp(model, rank, world, dist.group.WORLD.group_name, inplace=False)
    return model


def time_ms(fn, ids, iters: int, repeats: int) -> float:
    for _ in range(3):
        fn(ids)
    torch.cuda.synchronize()
    samples = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            fn(ids)
        end.record()
        torch.cuda.synchronize()
        samples.append(start.elapsed_time(end) / iters)
    return statistics.median(samples)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--world-size", type=int, default=int(os.environ.get("WORLD_SIZE", "1")))
    ap.add_argument("--models", default="llama8b,deepseek")
    ap.add_argument("--batches", default="1,8,64")
    ap.add_argument("--deepseek-layers", type=int, default=8)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", help="write the results here (rank 0)")
    args = ap.parse_args()

    if args.world_size > 1 and "RANK" not in os.environ:
        print("launch with torchrun --nproc-per-node N for --world-size > 1", file=sys.stderr)
        return 2
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("WORLD_SIZE", str(args.world_size))
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29613")
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    torch.cuda.set_device(local_rank)
    device = torch.device("cuda", local_rank)
    dist.init_process_group("nccl", device_id=device)
    world = dist.get_world_size()

    rows = []
    for name in args.models.split(","):
        model = build(name, rank, world, args.deepseek_layers, device)

        def step(ids, model=model):
            return model(input_ids=ids, use_cache=False).last_hidden_state

        for batch in (int(b) for b in args.batches.split(",")):
            gen = torch.Generator(device=device).manual_seed(7)
            ids = torch.randint(0, 1000, (batch, 1), device=device, generator=gen)
            torch._dynamo.reset()
            with torch.no_grad():
                plain = torch.compile(step, mode="reduce-overhead", dynamic=False)
                out_plain = plain(ids).clone()
                ms_plain = time_ms(plain, ids, args.iters, args.repeats)
                torch._dynamo.reset()
                fused = tt.compile(step, world_size=world, mode="reduce-overhead", dynamic=False)
                out_fused = fused(ids).clone()
                ms_fused = time_ms(fused, ids, args.iters, args.repeats)
            report = fused.tpfuse_pass.report
            diff = (out_fused.float() - out_plain.float()).abs()
            row = {"model": name, "world_size": world, "batch": batch,
                   "ms_torch_compile": ms_plain, "ms_tpfuse": ms_fused,
                   "speedup": ms_plain / ms_fused, "fused": report.fused,
                   "all_reduces": report.all_reduces, "left_alone": len(report.left_alone),
                   "outputs_equal": bool(torch.equal(out_fused, out_plain)),
                   "max_abs_diff": float(diff.max()),
                   "differing": int((diff > 0).sum()), "elements": diff.numel()}
            rows.append(row)
            if rank == 0:
                print(f"{name:9s} TP{world} batch {batch:3d}: torch.compile {ms_plain:8.3f} ms  "
                      f"+tpfuse {ms_fused:8.3f} ms  x{row['speedup']:.3f}  "
                      f"fused {report.fused}/{report.all_reduces}  "
                      f"outputs {'equal' if row['outputs_equal'] else 'differ'} "
                      f"(max {row['max_abs_diff']:.3g}, {row['differing']}/{row['elements']})",
                      flush=True)
        del model
        torch.cuda.empty_cache()
    if rank == 0 and args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
