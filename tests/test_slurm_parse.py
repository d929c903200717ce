"""Pure parsers of the slurm backend, on literal Slurm 22.05 output."""

from __future__ import annotations

import pytest

from agent.core.errors import RemediationError
from remediations.backends.slurm import parse_gpu_jobs, parse_node, parse_reasons
from remediations.rebalance import Params

NODE = ("NodeName=nw1 Arch=x86_64 CoresPerSocket=1 CPUAlloc=0 CPUEfctv=1 CPUTot=1 CPULoad=0.36 "
        "AvailableFeatures=(null) Gres=gpu:a100:8 NodeAddr=127.0.0.1 NodeHostName=localhost Version=22.05.8 "
        "RealMemory=100 AllocMem=0 FreeMem=23637 Sockets=1 Boards=1 State=IDLE+DRAIN ThreadsPerCore=1 TmpDisk=0 "
        "Partitions=gpu CfgTRES=cpu=1,mem=100M,billing=1 AllocTRES= CapWatts=n/a CurrentWatts=0 AveWatts=0 "
        "ExtSensorsJoules=n/s ExtSensorsWatts=0 ExtSensorsTemp=n/s "
        "Reason=nodewarden: XID 79 on GPU 0 [root@2026-11-22T22:25:37]\n")


def test_parse_node_state_and_reason():
    assert parse_node(NODE) == ({"IDLE", "DRAIN"}, "nodewarden: XID 79 on GPU 0")
    flags, reason = parse_node(NODE.split(" Reason=")[0].replace("IDLE+DRAIN", "MIXED"))
    assert (flags, reason) == ({"MIXED"}, "")


def test_parse_node_rejects_garbage():
    with pytest.raises(RemediationError):
        parse_node("slurm_load_node error: Invalid node name specified")


def test_parse_reasons_dedupes_partitions():
    text = "nw1|nodewarden: XID 79|drained\nnw2|none|idle\nnw1|nodewarden: XID 79|drained\nnw3|a|b c|drain\n"
    assert parse_reasons(text) == {"nw1": "nodewarden: XID 79|drained", "nw2": "none|idle",
                                   "nw3": "a|b c|drain"}


JOBS = (
    "JobId=11 JobName=train UserId=u(1) JobState=RUNNING NodeList=nw1 "
    "Nodes=nw1 CPU_IDs=0-3 Mem=0 GRES=gpu:a100:2(IDX:0-1) TRES=cpu=4\n"
    "JobId=12 JobName=eval UserId=u(1) JobState=RUNNING NodeList=nw1 "
    "Nodes=nw1 CPU_IDs=4 Mem=0 GRES=gpu:a100:1(IDX:3) TRES=cpu=1\n"
    "JobId=13 JobName=cpu UserId=u(1) JobState=RUNNING NodeList=nw1 Nodes=nw1 CPU_IDs=5 Mem=0 GRES= TRES=cpu=1\n"
    "JobId=14 JobName=other UserId=u(1) JobState=RUNNING NodeList=nw2 "
    "Nodes=nw2 CPU_IDs=0 Mem=0 GRES=gpu:1(IDX:0) TRES=cpu=1\n"
)


@pytest.mark.parametrize("gpu,jobs", [(0, ["11"]), (1, ["11"]), (3, ["12"]), (2, [])])
def test_parse_gpu_jobs(gpu, jobs):
    assert parse_gpu_jobs(JOBS, "nw1", gpu) == jobs


@pytest.mark.parametrize("field,value", [("node", "nw1 State=DOWN"), ("node", "-nw1"), ("node", ""),
                                         ("gpu", "0;1"), ("gpu", "1000"), ("reason", "a\nb" * 200)])
def test_params_refuse_values_that_could_reach_argv_unsafely(field, value):
    with pytest.raises(ValueError):
        Params.model_validate({field: value})


def test_params_accept_scheduler_names_and_gpu_uuids():
    p = Params.model_validate({"node": "gpu-a1.rack3", "gpu": "GPU-5e1f6a2b-7c3d-4e5f-8a9b-0c1d2e3f4a5b",
                               "reason": "xid  79\tfell off"})
    assert p.reason == "xid 79 fell off"
