"""CUDA graphs over length buckets: Trainer's training step, recorded once per batch shape and replayed.

A small model's step waits on the host: thousands of kernel launches a step, each costing more CPU
than the GPU spends on it. A CUDA graph launches a whole recorded forward and backward at once. A
graph needs fixed shapes, so training batches are padded to a multiple of BUCKET tokens (and keep
logits for a multiple of BUCKET positions); each new shape is recorded on first sight. The graphs
share one memory pool, so activations take what the largest shape needs, as in eager mode.

The recorded step is Trainer's own `training_step` (loss, scaling, backward); gradients accumulate
into the same `.grad` tensors every graph writes, which the optimizer then reads as usual.
"""
import torch
from transformers import Trainer

BUCKET = 16


def usable(cfg, processes, dtype):
    """Whether this run replays graphs: `train.cuda_graphs`, on a GPU, when nothing in the step needs the host."""
    if not cfg.cuda_graphs or not torch.cuda.is_available():
        return False
    # Several processes (gradient all-reduce hooks), checkpointing (it saves RNG state on the host)
    # and fp16 (its loss scaler reads the gradients) run eager. Compiled layers are recorded too.
    return processes == 1 and not cfg.gradient_checkpointing and dtype != torch.float16


class GraphedTrainer(Trainer):
    """Trainer whose training steps replay one CUDA graph per batch shape."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.graphs, self.pool, self.stream, self.grads = {}, torch.cuda.graph_pool_handle(), torch.cuda.Stream(), None

    def training_step(self, model, inputs, num_items_in_batch=None):
        if not torch.is_tensor(num_items_in_batch):  # only a tensor can be an input of the recorded step
            return super().training_step(model, inputs, num_items_in_batch)
        inputs = {**self._prepare_inputs(inputs), "num_items_in_batch": num_items_in_batch}
        shape = tuple((name, tuple(v.shape) if torch.is_tensor(v) else v) for name, v in sorted(inputs.items()))
        if shape not in self.graphs:
            self.graphs[shape] = self._record(model, inputs)
        graph, static, loss = self.graphs[shape]
        self._attach_grads(model)
        for name, value in inputs.items():
            if torch.is_tensor(value):
                static[name].copy_(value, non_blocking=True)
        graph.replay()
        return loss.clone()

    def _attach_grads(self, model):
        """The first micro-batch after `zero_grad` (which sets `.grad` to None): the recorded
        gradient tensors, zeroed, become `.grad` again."""
        params = [p for p in model.parameters() if p.requires_grad]
        if self.grads is None:
            self.grads = [torch.zeros_like(p) for p in params]
        elif params[0].grad is self.grads[0]:
            return
        else:
            torch._foreach_zero_(self.grads)
        for p, grad in zip(params, self.grads):
            p.grad = grad

    def _record(self, model, inputs):
        static = {name: v.clone() if torch.is_tensor(v) else v for name, v in inputs.items()}

        def step():
            batch = {name: v for name, v in static.items() if name != "num_items_in_batch"}
            return super(GraphedTrainer, self).training_step(model, batch, static["num_items_in_batch"])

        if not self.graphs:  # once, on the recording stream: lazy initializations happen outside a recording
            params = [p for p in model.parameters() if p.requires_grad]
            kept = [p.grad for p in params]
            self.stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self.stream):
                for p in params:
                    p.grad = None
                step()
            torch.cuda.current_stream().wait_stream(self.stream)
            for p, grad in zip(params, kept):
                p.grad = grad
        self._attach_grads(model)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool, stream=self.stream):
            loss = step()
        return graph, static, loss
