"""Third-party models built from tiny configs (random weights, nothing downloaded), with batches and a loss.

Each builder returns a :class:`Case`: the model (float64, for exact comparisons), a few
``(inputs, target)`` batches in the model's own input format, the loss the user would pass, the
parameter patterns that opt tied weights in, and the weight matrices that are left out on purpose
(embedding tables, position embeddings, class tokens).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

import prunelimit as pl


@dataclass
class Case:
    model: nn.Module
    batches: list
    loss_fn: Callable
    left_out: set  # weight matrices pl.coverage reports as left out by default
    include: list | None = None  # patterns that also select a tied weight (None: the default set)
    tied: dict = field(default_factory=dict)  # alias -> canonical name of tied weights in the mask set


def _ids(gen, vocab=48, batch=2, length=6, n=2):
    return [torch.randint(0, vocab, (batch, length), generator=gen) for _ in range(n)]


def cross_entropy_of_logits(output, target):
    return F.cross_entropy(output.logits if hasattr(output, "logits") else output, target)


def gpt2() -> Case:
    from transformers import GPT2Config, GPT2LMHeadModel
    cfg = GPT2Config(vocab_size=48, n_positions=16, n_embd=16, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(cfg)
    gen = torch.Generator().manual_seed(0)
    batches = [({"input_ids": ids}, ids) for ids in _ids(gen)]
    include = ["*.c_attn.weight", "*.c_proj.weight", "*.c_fc.weight", "lm_head.weight"]  # lm_head = wte: tied
    return Case(model, batches, pl.causal_lm_loss, {"transformer.wte.weight", "transformer.wpe.weight"}, include,
                {"lm_head.weight": "transformer.wte.weight"})


def bert() -> Case:
    from transformers import BertConfig, BertForSequenceClassification
    cfg = BertConfig(vocab_size=48, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                     max_position_embeddings=16, num_labels=3)
    model = BertForSequenceClassification(cfg)
    gen = torch.Generator().manual_seed(1)
    batches = [({"input_ids": ids, "attention_mask": torch.ones_like(ids)}, torch.randint(0, 3, (2,), generator=gen))
               for ids in _ids(gen)]
    left = {"bert.embeddings.word_embeddings.weight", "bert.embeddings.position_embeddings.weight",
            "bert.embeddings.token_type_embeddings.weight"}
    return Case(model, batches, cross_entropy_of_logits, left)


def llama() -> Case:
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(vocab_size=48, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, max_position_embeddings=16)
    model = LlamaForCausalLM(cfg)
    gen = torch.Generator().manual_seed(2)
    batches = [({"input_ids": ids}, ids) for ids in _ids(gen)]
    return Case(model, batches, pl.causal_lm_loss, {"model.embed_tokens.weight"})


def _images(seed, n=2, batch=2, classes=3, size=32, channels=3):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, channels, size, size, generator=gen), torch.randint(0, classes, (batch,), generator=gen))
            for _ in range(n)]


def timm_cnn() -> Case:
    import timm
    return Case(timm.create_model("test_resnet", pretrained=False, num_classes=3), _images(3), F.cross_entropy, set())


def timm_vit() -> Case:
    import timm
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=16,
                              depth=2, num_heads=2, num_classes=3)
    return Case(model, _images(4), F.cross_entropy, {"pos_embed", "cls_token"})


def torchvision_vit() -> Case:
    from torchvision.models import VisionTransformer
    model = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32,
                              num_classes=3)
    return Case(model, _images(5), F.cross_entropy, {"encoder.pos_embedding", "class_token"})


def mobilenet_v3() -> Case:
    from torchvision.models import mobilenet_v3_small
    return Case(mobilenet_v3_small(num_classes=3, width_mult=0.25), _images(6), F.cross_entropy, set())


class EveryConv(nn.Module):
    """Conv1d/2d/3d, their transposes, Bilinear and MultiheadAttention (packed and separate q/k/v)."""

    def __init__(self):
        super().__init__()
        self.c1, self.t1 = nn.Conv1d(3, 4, 3), nn.ConvTranspose1d(4, 3, 3)
        self.c2, self.t2 = nn.Conv2d(3, 4, 3), nn.ConvTranspose2d(4, 3, 3)
        self.c3, self.t3 = nn.Conv3d(3, 4, 3), nn.ConvTranspose3d(4, 3, 3)
        self.attn = nn.MultiheadAttention(6, 2, batch_first=True)
        self.attn_kv = nn.MultiheadAttention(6, 2, kdim=3, vdim=3, batch_first=True)
        self.bil = nn.Bilinear(6, 6, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, x1, x2, x3):
        a = self.t1(torch.tanh(self.c1(x1)))  # (B, 3, 6)
        b = self.t2(torch.tanh(self.c2(x2))).mean(dim=(2, 3))  # (B, 3)
        c = self.t3(torch.tanh(self.c3(x3))).mean(dim=(2, 3, 4))  # (B, 3)
        seq = a.transpose(1, 2)  # (B, 6 tokens, 3)
        q = torch.cat([seq, seq], dim=2)  # (B, 6, 6)
        h, _ = self.attn(q, q, q, need_weights=False)
        h2, _ = self.attn_kv(h, seq, seq, need_weights=False)
        z = self.bil(h.mean(1), h2.mean(1)) + torch.cat([b, c], 1)[:, :4]
        return self.head(torch.tanh(z))


def every_conv() -> Case:
    gen = torch.Generator().manual_seed(7)
    batches = [((torch.randn(2, 3, 6, generator=gen), torch.randn(2, 3, 5, 5, generator=gen),
                 torch.randn(2, 3, 4, 4, 4, generator=gen)), torch.randint(0, 3, (2,), generator=gen)) for _ in range(2)]
    return Case(EveryConv(), batches, F.cross_entropy, set())


BUILDERS = {"gpt2": gpt2, "bert": bert, "llama": llama, "timm_cnn": timm_cnn, "timm_vit": timm_vit,
            "torchvision_vit": torchvision_vit, "mobilenet_v3": mobilenet_v3, "every_conv": every_conv}


def build(name: str) -> Case:
    torch.manual_seed(0)
    case = BUILDERS[name]()
    case.model = case.model.double().eval()
    case.batches = [(_double(x), y) for x, y in case.batches]
    return case


def _double(x):
    if isinstance(x, torch.Tensor):
        return x.double() if x.is_floating_point() else x
    if isinstance(x, dict):
        return {k: _double(v) for k, v in x.items()}
    return type(x)(_double(v) for v in x)


WRAPPERS = {"plain": lambda m: m, "compile": torch.compile, "dataparallel": nn.DataParallel}


def first_example(case: Case):
    """The first example of the first batch, with a batch dimension of 1."""
    x = case.batches[0][0]
    if isinstance(x, torch.Tensor):
        return x[:1]
    if isinstance(x, dict):
        return {k: v[:1] for k, v in x.items()}
    return type(x)(v[:1] for v in x)
