"""CUDA graphs over length buckets: Trainer's training step, recorded once per batch shape and replayed.

A small model's step waits on the host: thousands of kernel launches a step, each costing more CPU
than the GPU spends on it. A CUDA graph launches a whole recorded forward and backward at once. A
graph needs fixed shapes, so training batches are padded to length buckets (`batches.length_bucket`,
for the batch length and the logits kept); every shape of the run is recorded before its first step.
The graphs share one memory pool, so activations take about what the largest shape needs, as in
eager mode.

The recorded step is Trainer's own `training_step` (loss, scaling, backward); gradients accumulate
into the same `.grad` tensors every graph writes, which the optimizer then reads as usual.

With several processes the graphs record the model inside the data-parallel wrapper, so no
all-reduce sits inside them; after each global batch's last micro-batch the gradients, one flat
buffer, are averaged across processes in one all-reduce, as the wrapper would have averaged them.
"""
import torch
from transformers import Trainer

from . import distributed
from .errors import first_line


def usable(cfg, dtype):
    """Whether this run replays graphs: `train.cuda_graphs`, on a GPU, when nothing in the step needs the host."""
    if not cfg.cuda_graphs or not torch.cuda.is_available():
        return False
    # Checkpointing (it saves RNG state on the host) and fp16 (its loss scaler reads the gradients)
    # run eagerly.
    return not cfg.gradient_checkpointing and dtype != torch.float16


class GraphedTrainer(Trainer):
    """Trainer whose training steps replay one CUDA graph per batch shape.

    Every shape the run will see is recorded before the first step, largest first, so that each
    smaller one reuses the memory the larger ones freed (recorded in arrival order, the pool grew with
    every new shape). If recording fails (out of memory, or an operation that cannot be recorded), the
    run says so and steps eagerly.
    """

    def __init__(self, *args, stage, **kwargs):
        super().__init__(*args, **kwargs)
        self.stage = stage  # names the run in the line that says graphs could not be recorded
        self.graphs = self.grads = self.flat_grads = self.trained = None  # made by the first training step
        self.pool, self.stream = torch.cuda.graph_pool_handle(), torch.cuda.Stream()

    def train(self, *args, **kwargs):
        """The whole run on the recording stream. A parameter's gradient accumulator belongs to the
        stream it was made on, and the data-parallel wrapper makes them when Trainer wraps the model:
        made on the default stream, they failed every recording ("operation would make the legacy
        stream depend on a capturing blocking stream")."""
        self.stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.stream):
            result = super().train(*args, **kwargs)
        torch.cuda.current_stream().wait_stream(self.stream)
        return result

    def training_step(self, model, inputs, num_items_in_batch=None):
        if self.graphs is None:
            self.graphs = self._record_all(num_items_in_batch)
            if not distributed.agree_on_min(bool(self.graphs)):  # every process replays, or none does
                self.graphs = {}
        if not self.graphs:
            return super().training_step(model, inputs, num_items_in_batch)
        inputs = {**inputs, "num_items_in_batch": num_items_in_batch}  # on the GPU already (the loader's)
        graph, static, loss = self.graphs[shape_of(inputs)]
        self._attach_grads()
        for name, value in inputs.items():
            if torch.is_tensor(value):
                static[name].copy_(value, non_blocking=True)
        graph.replay()
        if self.args.world_size > 1 and self.accelerator.sync_gradients:  # the global batch's last micro-batch
            distributed.average(self.flat_grads)
        return loss.clone()

    def _record_all(self, num_items_in_batch):
        """{shape: (graph, its static inputs, its loss)} for every micro-batch shape of the run; {} if
        the step cannot be recorded here."""
        if not torch.is_tensor(num_items_in_batch):  # only a tensor can be an input of the recorded step
            return {}
        # Trainer's own model, not the data-parallel wrapper it hands to training_step: its gradient
        # hooks wait for a forward pass through the wrapper, which never comes, and stay idle.
        model = self.model
        self.trained = [p for p in model.parameters() if p.requires_grad]
        micro, examples = self.args.per_device_train_batch_size, self.train_dataset
        batches = {}
        for start in range(0, len(examples), micro):  # the order is sequential: `training.schedule`
            batch = examples[start:start + micro]
            batches.setdefault(self.data_collator.shape(batch), batch)
        graphs = {}
        try:
            for shape in sorted(batches, key=lambda s: (s[0] * s[1], s[2]), reverse=True):
                inputs = {**self._prepare_inputs(self.data_collator(batches[shape])),
                          "num_items_in_batch": num_items_in_batch}
                graphs[shape_of(inputs)] = self._record(model, inputs, warm_up=not graphs)
        except (torch.OutOfMemoryError, RuntimeError) as err:
            print(f"{self.stage}: steps run eagerly, CUDA graphs could not be recorded: {first_error(err)}", flush=True)
            graphs.clear()
            torch.cuda.empty_cache()
        return graphs

    def _attach_grads(self):
        """The first micro-batch after `zero_grad` (which sets `.grad` to None): the recorded
        gradient tensors, zeroed, become `.grad` again. They are views of one flat buffer per dtype,
        which a single all-reduce averages across processes."""
        if self.grads is None:
            self.flat_grads, self.grads = flat_views(self.trained)
        elif self.trained[0].grad is self.grads[0]:
            return
        else:
            torch._foreach_zero_(self.flat_grads)
        for p, grad in zip(self.trained, self.grads):
            p.grad = grad

    def _record(self, model, inputs, warm_up):
        static = {name: v.clone() if torch.is_tensor(v) else v for name, v in inputs.items()}

        def step():
            batch = {name: v for name, v in static.items() if name != "num_items_in_batch"}
            return super(GraphedTrainer, self).training_step(model, batch, static["num_items_in_batch"])

        if warm_up:  # on the recording stream (`train`): lazy initializations happen outside a recording
            kept = [p.grad for p in self.trained]
            for p in self.trained:
                p.grad = None
            step()
            for p, grad in zip(self.trained, kept):
                p.grad = grad
        self._attach_grads()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool, stream=self.stream):
            loss = step()
        return graph, static, loss


def flat_views(params):
    """(one zeroed buffer per dtype, a view of it shaped like each of `params`, in their order)."""
    sizes = {}
    for p in params:
        sizes[p.dtype] = sizes.get(p.dtype, 0) + p.numel()
    flats = {dtype: torch.zeros(size, dtype=dtype, device=params[0].device) for dtype, size in sizes.items()}
    views, used = [], dict.fromkeys(sizes, 0)
    for p in params:
        views.append(flats[p.dtype][used[p.dtype]:used[p.dtype] + p.numel()].view_as(p))
        used[p.dtype] += p.numel()
    return list(flats.values()), views


def first_error(err):
    """The first line of the error that started it all: a failed recording raises "operation failed
    due to a previous error during capture", and the previous error is the one that says why."""
    while err.__cause__ or err.__context__:
        err = err.__cause__ or err.__context__
    return first_line(err)


def shape_of(inputs):
    return tuple((name, tuple(v.shape) if torch.is_tensor(v) else v) for name, v in sorted(inputs.items()))
