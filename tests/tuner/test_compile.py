"""torch.compile of a FisherTune model: no more graph breaks than LoRA, one graph across the Eq. 16 schedule, and
compiled training equal to eager. The "eager" backends keep it fast: Dynamo's tracing is what is tested."""

import copy

import peft
import torch
from torch._dynamo.testing import CompileCounter

import fishertune

from .conftest import tiny_vit

TARGETS = ["q_proj", "k_proj", "v_proj", "fc1", "fc2"]


def _breaks(model, x) -> int:
    torch._dynamo.reset()
    return torch._dynamo.explain(lambda x: model(pixel_values=x).logits)(x).graph_break_count


def test_no_more_graph_breaks_than_lora(batch):
    x, _ = batch
    lora = peft.get_peft_model(tiny_vit(), peft.LoraConfig(target_modules=TARGETS))
    sparse = peft.get_peft_model(tiny_vit(), fishertune.FisherTuneConfig(target_modules=TARGETS))
    assert _breaks(sparse, x) <= _breaks(lora, x)


def test_schedule_does_not_recompile_and_compiled_training_equals_eager(batch):
    x, y = batch
    torch._dynamo.reset()
    config = fishertune.FisherTuneConfig(delta_max=0.2, delta_min=0.02, init_weights=False)
    base = tiny_vit()
    base.config.problem_type = "single_label_classification"  # transformers sets it on the first loss: a recompile
    eager = peft.get_peft_model(base, config).train()
    model = copy.deepcopy(eager)
    counter = CompileCounter()
    compiled = torch.compile(model, backend=counter)
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    eager_params = dict(eager.named_parameters())
    actives = set()
    for step in range(4):
        for m in (eager, model):
            m.set_schedule_step(step, total_steps=4)  # a new active count every step (Eq. 16)
        actives.add(model.num_active())
        loss_c = compiled(pixel_values=x, labels=y).loss
        loss_e = eager(pixel_values=x, labels=y).loss
        torch.testing.assert_close(loss_c, loss_e, rtol=1e-5, atol=1e-6)
        loss_c.backward()
        loss_e.backward()
        with torch.no_grad():
            for n, p in params.items():
                q = eager_params[n]
                torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=n)
                p -= 0.5 * p.grad
                q -= 0.5 * q.grad
                p.grad = q.grad = None
    assert len(actives) == 4
    assert counter.frame_count == 1, f"{counter.frame_count} compiled frames over the schedule"
