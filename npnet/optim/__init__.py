"""Optimizers and learning-rate schedulers, with torch.optim's update rules.

    opt = npnet.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = npnet.optim.StepLR(opt, step_size=10, gamma=0.1)
    for epoch in range(epochs):
        for x, y in loader:
            opt.zero_grad()
            loss = crit(model(x), y)
            model.backward(crit.backward())
            opt.step()
        sched.step()

One parameter group: the hyperparameters are attributes of the optimizer (``opt.lr``).
"""
from . import lr_scheduler
from .adam import Adam
from .lr_scheduler import CosineAnnealingLR, LRScheduler, StepLR
from .optimizer import Optimizer
from .sgd import SGD

__all__ = ["Optimizer", "SGD", "Adam", "LRScheduler", "StepLR", "CosineAnnealingLR",
           "lr_scheduler"]
