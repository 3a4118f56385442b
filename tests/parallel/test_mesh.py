"""A data x seq grid: ``parallelize(model, mesh=DeviceMesh(..., ("data", "seq")))`` on a 2 x 2 mesh
equals one process on the combined batch (float64), and bad meshes are refused clearly."""
import pytest
import torch
import torch.distributed as dist

import longmix.parallel as lp
from longmix.models.model import build_model
from longmix.parallel.launch import run_local
from longmix.parallel.mesh import data_seq_groups, seq_group

BATCH, SEQ_LEN, VOCAB = 4, 11, 13


def _model():
    torch.manual_seed(0)
    return build_model(vocab_size=VOCAB, mixer="mamba", head="lm", dim=8, depth=2, heads=2,
                       positional="sinusoidal").double()


def _loss_sum(logits, targets):
    return torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1),
                                             reduction="sum")


def mesh_worker(group, layout):
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("data", "seq"))
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, VOCAB, (BATCH, SEQ_LEN + 1), generator=g)
    x, y = tokens[:, :-1], tokens[:, 1:]
    model = _model()
    row = mesh.get_local_rank("data")
    part = slice(row * BATCH // 2, (row + 1) * BATCH // 2)  # this row's part of the batch
    seq = mesh.get_group("seq")
    pmodel = lp.parallelize(model, layout=layout, mesh=mesh)
    logits = pmodel(lp.shard(x[part], seq, layout))
    share = _loss_sum(logits, lp.shard(y[part], seq, layout)) / y.numel()  # global mean's share
    share.backward()
    loss = share.detach().clone()
    dist.all_reduce(loss)
    grads = [p.grad.clone() for p in model.parameters()]
    for grad in grads:
        dist.all_reduce(grad)  # over every rank of the grid
    return loss.item(), grads


def test_a_2x2_mesh_equals_one_process_on_the_combined_batch():
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, VOCAB, (BATCH, SEQ_LEN + 1), generator=g)
    model = _model()
    loss = _loss_sum(model(tokens[:, :-1]), tokens[:, 1:]) / tokens[:, 1:].numel()
    loss.backward()
    for layout in ("contiguous", "zigzag"):
        for got_loss, grads in run_local(mesh_worker, 4, args=(layout,), timeout=180):
            assert got_loss == pytest.approx(loss.item(), rel=1e-12)
            for got, p in zip(grads, model.parameters()):
                torch.testing.assert_close(got, p.grad, rtol=1e-10, atol=1e-12)


def bad_mesh_worker(group):
    from torch.distributed.device_mesh import init_device_mesh

    messages = []
    mesh = init_device_mesh("cpu", (2,), mesh_dim_names=("data",))
    for call in (lambda: seq_group(mesh=mesh), lambda: seq_group(group, mesh),
                 lambda: data_seq_groups(group, 3)):
        try:
            call()
            messages.append(None)
        except ValueError as err:
            messages.append(str(err))
    return messages


def test_a_mesh_without_a_seq_dimension_or_a_grid_that_does_not_divide_is_refused_on_every_rank():
    for messages in run_local(bad_mesh_worker, 2, timeout=120):
        assert "'seq' dimension" in messages[0]
        assert "not both" in messages[1]
        assert "seq_parallel=3 must divide the number of ranks (2)" in messages[2]
