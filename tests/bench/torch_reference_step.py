#!/usr/bin/env python3
"""One S0 training step of the s0-tuning recipe (PyTorch + transformers 5.17) on a Qwen3.5-4B-shaped
model: the reference that tests/bench/train_step_bench.cpp (s0_train_step_bench) is compared with.

Usage:
    python3 tests/bench/torch_reference_step.py [--examples 48] [--seq-len 384] [--prompt 200]
                                                [--warmup-examples 2] [--seed 1]

Model: Qwen3_5ForCausalLM built from a Qwen3_5TextConfig with the shapes of the C++ benchmark
(hidden 2560, 32 layers [3 DeltaNet : 1 attention] x 8, 16 query / 4 KV heads of 256, partial rotary
0.25, theta 1e7, DeltaNet 16 key / 32 value heads of 128, conv 4, intermediate 9216, vocab 248320,
tied embeddings), created directly on the GPU in bfloat16 with Hugging Face's random init, eval mode,
its default attention implementation.

Recipe (s0-tuning 0.1.2, S0Trainer.train):
  * USE_HUB_KERNELS=NO is set before transformers is imported; the delta rule is Hugging Face's torch
    fallback torch_chunk_gated_delta_rule and the causal conv its torch fallback (the hub/package
    dispatch wrappers are unwrapped, so no optional kernel package can take over).
  * S0: one fp32 [H_v, d_k, d_v] parameter per DeltaNet layer, zeros, requires_grad; every model
    parameter frozen; torch.optim.Adam(lr 1e-3).
  * Injection: transformers 5 calls the delta rule as a function of modeling_qwen3_5 (the library's
    per-instance patch of `chunk_gated_delta_rule` is never reached there), so that function is
    replaced by a wrapper that passes initial_state = S0[layer] expanded over the batch, the layer
    being named by a forward pre-hook on every Qwen3_5GatedDeltaNet. Every forward checks that each
    DeltaNet layer went through the wrapper exactly once.
  * A step: zero_grad; per example (one at a time): loss = model(input_ids=ids, labels=labels).loss
    (labels = ids with the prompt set to -100), (loss / N).backward(); then
    (l2_lambda * sum ||S0||^2).backward(), clip_grad_norm_(S0s, 1.0), optimizer.step().

Timing: one warm-up step on --warmup-examples examples, then ONE step on --examples examples, between
torch.cuda.synchronize() calls (time.perf_counter). Peak memory: torch.cuda.max_memory_allocated()
over the timed step (and max_memory_reserved). Nothing is extrapolated: the figures are those of
the step that ran. The last line of the output is one JSON object.
"""

import os

# Must be set before transformers is imported (hub-kernel decorators read it at import time).
os.environ["USE_HUB_KERNELS"] = "NO"
os.environ.setdefault("NCCL_NVLS_ENABLE", "0")

import argparse  # noqa: E402
import collections  # noqa: E402
import inspect  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers.models.qwen3_5 import modeling_qwen3_5 as M  # noqa: E402
from transformers.models.qwen3_5.configuration_qwen3_5 import Qwen3_5TextConfig  # noqa: E402

LR = 1e-3
L2_LAMBDA = 5e-4
GRAD_CLIP = 1.0


def fail(msg):
    print(f"torch_reference_step: {msg}", file=sys.stderr)
    sys.exit(1)


def build_config():
    layer_types = ["full_attention" if i % 4 == 3 else "linear_attention" for i in range(32)]
    cfg = Qwen3_5TextConfig(
        vocab_size=248320,
        hidden_size=2560,
        intermediate_size=9216,
        num_hidden_layers=32,
        num_attention_heads=16,
        num_key_value_heads=4,
        head_dim=256,
        linear_num_key_heads=16,
        linear_num_value_heads=32,
        linear_key_head_dim=128,
        linear_value_head_dim=128,
        linear_conv_kernel_dim=4,
        layer_types=layer_types,
        rms_norm_eps=1e-6,
        hidden_act="silu",
        attention_bias=False,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 1e7, "partial_rotary_factor": 0.25},
        partial_rotary_factor=0.25,
    )
    rp = cfg.rope_parameters
    if float(rp["rope_theta"]) != 1e7 or float(rp.get("partial_rotary_factor", 1.0)) != 0.25:
        fail(f"rope_parameters resolved to {rp}")
    if list(cfg.layer_types) != layer_types:
        fail(f"layer_types resolved to {cfg.layer_types}")
    return cfg


class S0Injection:
    """Replaces modeling_qwen3_5's delta rule by a wrapper passing S0[layer] as initial_state."""

    def __init__(self, model, states):
        self.states = states
        self.current = None
        self.calls = collections.Counter()
        original = M.__dict__.get("torch_chunk_gated_delta_rule")
        if not callable(original):
            fail("modeling_qwen3_5 has no torch_chunk_gated_delta_rule")
        self.torch_fn = inspect.unwrap(original)
        if not getattr(self.torch_fn, "__module__", "").startswith("transformers."):
            fail(f"the unwrapped delta rule comes from {self.torch_fn.__module__}, not transformers")
        self.patched = []
        # The function as a module global wherever transformers holds that same object.
        for mod_name, mod in list(sys.modules.items()):
            d = getattr(mod, "__dict__", None)
            if isinstance(d, dict) and (mod is M or mod_name.startswith("transformers.")):
                if d.get("torch_chunk_gated_delta_rule") is original:
                    setattr(mod, "torch_chunk_gated_delta_rule", self.chunk)
                    self.patched.append(f"{mod_name}.torch_chunk_gated_delta_rule")
        # The torch causal conv (the wrapper would dispatch to an installed causal_conv1d package).
        conv = M.__dict__.get("causal_conv1d_fn")
        if callable(conv) and hasattr(conv, "__wrapped__"):
            M.causal_conv1d_fn = inspect.unwrap(conv)
            self.patched.append("modeling_qwen3_5.causal_conv1d_fn -> torch fallback")
        self.layers = []
        for mod in model.modules():
            if isinstance(mod, M.Qwen3_5GatedDeltaNet):
                if hasattr(mod, "chunk_gated_delta_rule"):  # layouts that keep it on the instance
                    mod.chunk_gated_delta_rule = self.chunk
                if getattr(mod, "causal_conv1d_fn", None) is not None:
                    mod.causal_conv1d_fn = None
                mod.register_forward_pre_hook(self.pre_hook)
                self.layers.append(int(mod.layer_idx))
        if sorted(self.layers) != sorted(states):
            fail(f"DeltaNet layers {self.layers} != S0 layers {sorted(states)}")

    def pre_hook(self, module, args):
        self.current = module.layer_idx

    def chunk(self, query, key, value, g, beta, chunk_size=64, initial_state=None,
              output_final_state=False, use_qk_l2norm_in_kernel=False, **kwargs):
        layer, self.current = self.current, None
        if layer is None:
            fail("the delta rule ran outside a hooked Qwen3_5GatedDeltaNet forward")
        self.calls[layer] += 1
        s0 = self.states[layer]
        init = s0.unsqueeze(0).expand(query.shape[0], -1, -1, -1).contiguous()
        return self.torch_fn(query, key, value, g=g, beta=beta, chunk_size=chunk_size,
                             initial_state=init, output_final_state=output_final_state,
                             use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel, **kwargs)

    def check_one_forward(self):
        want = {l: 1 for l in self.layers}
        if dict(self.calls) != want:
            fail(f"delta-rule calls per layer {dict(self.calls)}, expected {want}: S0 bypassed")
        self.calls.clear()


def make_examples(n, seq_len, prompt, vocab, gen):
    out = []
    for _ in range(n):
        ids = torch.randint(0, vocab, (1, seq_len), generator=gen).cuda()
        labels = ids.clone()
        labels[0, :prompt] = -100
        out.append((ids, labels))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--examples", type=int, default=48)
    ap.add_argument("--seq-len", type=int, default=384)
    ap.add_argument("--prompt", type=int, default=200)
    ap.add_argument("--warmup-examples", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    if not (args.examples > 0 and args.warmup_examples > 0 and 0 <= args.prompt < args.seq_len):
        fail("need --examples > 0, --warmup-examples > 0 and 0 <= --prompt < --seq-len")
    if not torch.cuda.is_available():
        fail("needs a CUDA GPU")

    torch.manual_seed(args.seed)
    cfg = build_config()
    t0 = time.perf_counter()
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = M.Qwen3_5ForCausalLM(cfg)
    torch.set_default_dtype(torch.float32)
    model.eval()
    torch.cuda.synchronize()
    build_s = time.perf_counter() - t0
    if model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr():
        fail("embeddings are not tied")
    dtypes = collections.Counter(str(p.dtype).replace("torch.", "") for p in model.parameters())
    for p in model.parameters():
        p.requires_grad_(False)

    shape = (cfg.linear_num_value_heads, cfg.linear_key_head_dim, cfg.linear_value_head_dim)
    layers = [i for i, t in enumerate(cfg.layer_types) if t == "linear_attention"]
    states = {
        l: torch.nn.Parameter(torch.zeros(shape, device="cuda", dtype=torch.float32)) for l in layers
    }
    params = list(states.values())
    injection = S0Injection(model, states)
    optimizer = torch.optim.Adam(params, lr=LR)

    def train_step(examples):
        optimizer.zero_grad()
        loss_sum = 0.0
        for ids, labels in examples:
            loss = model(input_ids=ids, labels=labels).loss
            injection.check_one_forward()
            (loss / len(examples)).backward()
            loss_sum += loss.item()
        l2 = sum(p.pow(2).sum() for p in params)
        (L2_LAMBDA * l2).backward()
        norm = torch.nn.utils.clip_grad_norm_(params, GRAD_CLIP)
        optimizer.step()
        return loss_sum / len(examples), float(norm)

    gen = torch.Generator().manual_seed(args.seed)
    warmup = make_examples(args.warmup_examples, args.seq_len, args.prompt, cfg.vocab_size, gen)
    batch = make_examples(args.examples, args.seq_len, args.prompt, cfg.vocab_size, gen)

    train_step(warmup)
    missing = [l for l, p in states.items() if p.grad is None or not torch.isfinite(p.grad).all()]
    if missing:
        fail(f"no finite gradient reached S0 of layers {missing}")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    loss, grad_norm = train_step(batch)
    torch.cuda.synchronize()
    step_s = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated()
    reserved = torch.cuda.max_memory_reserved()

    tokens = args.examples * args.seq_len
    gib = float(1 << 30)
    print(f"torch_reference_step on {torch.cuda.get_device_name()}: torch {torch.__version__}, "
          f"transformers {transformers.__version__}, attention {model.config._attn_implementation}")
    print(f"model: Qwen3_5ForCausalLM, 4B shape, random init in {build_s:.1f} s, "
          f"parameter dtypes {dict(dtypes)}")
    print(f"delta rule: {injection.torch_fn.__module__}.{injection.torch_fn.__qualname__}; patched: "
          + ", ".join(injection.patched))
    print(f"step: {args.examples} examples x {args.seq_len} tokens (prompt {args.prompt}), "
          f"one at a time: {step_s:.3f} s = {step_s / args.examples:.4f} s per example = "
          f"{tokens / step_s:.1f} tokens/s; loss {loss:.6f}, grad norm {grad_norm:.4g}")
    print(f"peak memory: {peak / gib:.2f} GiB allocated, {reserved / gib:.2f} GiB reserved")
    print(json.dumps({
        "impl": "torch",
        "device": torch.cuda.get_device_name(),
        "examples": args.examples,
        "seq_len": args.seq_len,
        "prompt_len": args.prompt,
        "tokens_per_step": tokens,
        "step_s": step_s,
        "s_per_example": step_s / args.examples,
        "tokens_per_s": tokens / step_s,
        "loss": loss,
        "grad_norm": grad_norm,
        "peak_mem_bytes": peak,
        "peak_reserved_bytes": reserved,
        "attn_implementation": model.config._attn_implementation,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }))


if __name__ == "__main__":
    main()
