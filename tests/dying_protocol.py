"""D-PSGD whose process of one rank dies, hangs, or gets a Ctrl-C, mid-run (the distributed
engine's failure and interruption tests)."""

from __future__ import annotations

import os
import signal
import time

import torch.distributed as dist

from privlab.mechanisms.gossip import DecentralizedSGD


class DiesAtRound(DecentralizedSGD):
    """Plain D-PSGD, except that the process of rank ``rank`` exits at round ``round``."""

    def __init__(self, rank: int = 1, round: int = 3):
        self.dying_rank, self.dying_round = rank, round

    def send(self, params, plan, round, exchange):
        if round == self.dying_round and dist.is_initialized():
            if dist.get_rank() == self.dying_rank:
                os._exit(1)
        return super().send(params, plan, round, exchange)


class CtrlCAtRound(DecentralizedSGD):
    """Plain D-PSGD, except that rank ``rank`` gets a Ctrl-C (SIGINT) at round ``round``."""

    def __init__(self, rank: int = 1, round: int = 2):
        self.signal_rank, self.signal_round = rank, round

    def send(self, params, plan, round, exchange):
        if round == self.signal_round and dist.get_rank() == self.signal_rank:
            signal.raise_signal(signal.SIGINT)
        return super().send(params, plan, round, exchange)


class HangsAtRound(DecentralizedSGD):
    """Plain D-PSGD, except that the process of rank ``rank`` stops answering (sleeps for
    an hour) at round ``round``."""

    def __init__(self, rank: int = 1, round: int = 3):
        self.silent_rank, self.silent_round = rank, round

    def send(self, params, plan, round, exchange):
        if round == self.silent_round and dist.get_rank() == self.silent_rank:
            time.sleep(3600)
        return super().send(params, plan, round, exchange)
