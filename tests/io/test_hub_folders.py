"""``probe.from_hf("<folder>")`` loads every converted family as the hub holds it (``config.json`` +
``model.safetensors`` + tokenizer files, written here by ``save_pretrained``), offline, into the model
the in-memory conversion gives: identical logits, the folder's own tokenizer attached. A folder without
tokenizer files is refused before any weight is read, naming the files it looked for.

Each family is a tiny random transformers model (the parity with transformers itself is each family's
own test); flash-linear-attention's folders are tested beside their converters (RWKV-7:
tests/io/test_rwkv7_fla.py, HGRN2: tests/mixers/test_hgrn2.py).
"""
from __future__ import annotations

import warnings

import pytest
import torch

import probe
from conftest import randomise
from hub_folder import save_tokenizer, text
from probe.errors import CheckpointError

transformers = pytest.importorskip("transformers")

VOCAB = 60

#: family -> (transformers class, its config class, the config's fields): the smallest configs each
#: family's own parity test uses, shrunk where a field allows
FAMILIES = {
    "gpt2": ("GPT2LMHeadModel", "GPT2Config", dict(n_embd=32, n_layer=2, n_head=4, n_positions=64)),
    "rwkv": ("RwkvForCausalLM", "RwkvConfig", dict(hidden_size=32, num_hidden_layers=2, intermediate_size=64,
                                                 attention_hidden_size=32, rescale_every=0, context_length=64)),
    "mamba": ("MambaForCausalLM", "MambaConfig", dict(hidden_size=32, num_hidden_layers=2, state_size=8, expand=2,
                                                    conv_kernel=4)),
    "mamba2": ("Mamba2ForCausalLM", "Mamba2Config", dict(hidden_size=32, num_heads=4, head_dim=16, state_size=8,
                                                       n_groups=1, num_hidden_layers=2, expand=2, chunk_size=16)),
    "xlstm": ("xLSTMForCausalLM", "xLSTMConfig", dict(hidden_size=64, num_hidden_layers=2, num_heads=4,
                                                    qk_dim_factor=0.5, mode="inference", chunk_size=16,
                                                    autocast_kernel_dtype="float32", use_cache=False)),
    "recurrent_gemma": ("RecurrentGemmaForCausalLM", "RecurrentGemmaConfig",
                        dict(hidden_size=32, lru_width=48, num_attention_heads=4, num_hidden_layers=2,
                             intermediate_size=96, block_types=["recurrent"], attention_window_size=8)),
    "qwen3_next": ("Qwen3NextForCausalLM", "Qwen3NextConfig",
                   dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                        layer_types=["linear_attention", "full_attention"], num_experts=0, linear_num_key_heads=2,
                        linear_num_value_heads=4, linear_key_head_dim=8, linear_value_head_dim=4,
                        linear_conv_kernel_dim=4, num_attention_heads=2, num_key_value_heads=1, head_dim=16)),
    "zamba2": ("Zamba2ForCausalLM", "Zamba2Config",
               dict(hidden_size=32, num_hidden_layers=2, layers_block_type=["mamba", "hybrid"], mamba_d_state=8,
                    n_mamba_heads=4, mamba_ngroups=1, chunk_size=8, num_attention_heads=4, intermediate_size=48,
                    num_mem_blocks=1, use_shared_attention_adapter=True, adapter_rank=4, use_mem_rope=True,
                    max_position_embeddings=128)),
    "falcon_h1": ("FalconH1ForCausalLM", "FalconH1Config",
                  dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, mamba_d_ssm=48, mamba_n_heads=6, mamba_n_groups=2, mamba_d_state=8,
                       mamba_d_conv=4, mamba_chunk_size=8, max_position_embeddings=128, embedding_multiplier=1.7,
                       ssm_out_multiplier=0.75)),
    "jamba": ("JambaForCausalLM", "JambaConfig",
              dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, attn_layer_period=2, attn_layer_offset=1, expert_layer_period=2,
                   expert_layer_offset=0, num_experts=4, num_experts_per_tok=2, mamba_d_state=8, mamba_d_conv=4,
                   mamba_expand=2)),
    "bamba": ("BambaForCausalLM", "BambaConfig",
              dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, attn_layer_indices=[1],
                   num_attention_heads=4, num_key_value_heads=2, mamba_n_heads=4, mamba_d_head=16,
                   mamba_n_groups=1, mamba_d_state=8, mamba_d_conv=4, mamba_expand=2, mamba_chunk_size=16)),
    "olmo_hybrid": ("OlmoHybridForCausalLM", "OlmoHybridConfig",
                    dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         layer_types=["linear_attention", "full_attention"], num_attention_heads=4,
                         num_key_value_heads=2, linear_num_key_heads=2, linear_num_value_heads=4,
                         linear_key_head_dim=8, linear_value_head_dim=4, linear_conv_kernel_dim=4,
                         max_position_embeddings=256)),
    "kimi_linear": ("KimiLinearForCausalLM", "KimiLinearConfig",
                    dict(hidden_size=32, intermediate_size=48, moe_intermediate_size=16, num_hidden_layers=2,
                         layer_types=["linear_attention", "full_attention"], mlp_layer_types=["dense", "sparse"],
                         num_attention_heads=4, num_key_value_heads=4, kv_lora_rank=12, q_lora_rank=None,
                         qk_rope_head_dim=4, qk_nope_head_dim=8, v_head_dim=6, num_local_experts=4,
                         num_experts_per_tok=2, n_shared_experts=1, n_group=2, topk_group=1, linear_num_heads=2,
                         linear_head_dim=8)),
}


def tiny(family: str):
    """A random transformers model of ``family`` (special-token ids inside the tiny vocabulary)."""
    model_class, config_class, fields = FAMILIES[family]
    torch.manual_seed(0)
    config = getattr(transformers, config_class)(vocab_size=VOCAB, pad_token_id=0, bos_token_id=1,
                                                 eos_token_id=VOCAB - 1, **fields)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return randomise(getattr(transformers, model_class)(config).eval(), 0.05)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_saved_folder_loads_offline_as_the_in_memory_conversion(tmp_path, family):
    hf = tiny(family)
    folder = tmp_path / family
    hf.save_pretrained(folder)
    with pytest.raises(CheckpointError, match="holds no tokenizer files.*tokenizer.json"):
        probe.from_hf(str(folder))
    tok = save_tokenizer(folder, VOCAB)
    words = text(9, VOCAB)
    model = probe.from_hf(str(folder))
    assert model.to_tokens(words, prepend_bos=False)[0].tolist() == tok.encode(words)
    ids = torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(model(ids), probe.from_hf(hf, tokenizer="byte")(ids))


def test_the_tokenizer_files_are_checked_before_any_weight_is_read(tmp_path):
    """A folder holding only its config (no weights either) is refused for its tokenizer, which comes
    first: a large checkpoint is never loaded only to be refused."""
    tiny("gpt2").config.save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="holds no tokenizer files"):
        probe.from_hf(str(tmp_path))
