"""The shape of a model stage's actor pool: replicas, their resources, and rows per actor call."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from schemas.settings import SettingError, at_least, setting

# Resources Ray reserves through their own options (--cpus-per-actor, --gpus-per-actor, memory requests).
RAY_BUILTIN_RESOURCES = ("CPU", "GPU", "memory", "object_store_memory")


@dataclass(frozen=True)
class PoolSpec:
    """How many model replicas run, what each reserves, and how many rows each call receives."""

    actors: int = setting(1, help="model actors (one model replica each)")
    gpus_per_actor: float | None = setting(
        None, help="GPUs per actor (default: 1 when the cluster has GPUs, else 0 = CPU)"
    )
    cpus_per_actor: float = setting(1.0, help="CPUs reserved per actor")
    actor_resources: tuple[str, ...] = setting(
        (),
        metavar="NAME=AMOUNT,...",
        help="custom Ray resources each actor reserves besides CPUs and GPUs, e.g. accelerator=1: the actors "
        "go only to nodes that declare them (default: none)",
    )
    torch_threads: int | None = setting(
        None, help="torch intra-op threads in each actor (CPU runs; default: torch's own choice)"
    )
    block_rows: int = setting(
        2048,
        help="rows handed to an actor per call; they are length-sorted together, so more rows pad less",
    )
    preprocess_tasks: int | None = setting(
        None,
        help="concurrent CPU tasks preprocessing pairs (tokenise, template, process media) ahead of the "
        "actors (default: as many as the cluster's free CPUs allow); 0: each actor preprocesses its own "
        "blocks before their forward, for CPU-only pools, where a separate stage only competes for the "
        "same cores",
    )
    max_restarts: int = setting(
        3, help="times Ray restarts a crashed actor (OOM, lost node) before the stage fails; -1: forever"
    )
    max_task_retries: int = setting(
        3,
        help="times a block whose actor crashed is retried on a restarted actor; -1: forever (scoring: "
        "counts only crashes on nodes still alive, a lost node's are retried regardless)",
    )

    def validate(self) -> PoolSpec:
        at_least(self, 1, "actors", "block_rows", "torch_threads")
        at_least(self, 0, "preprocess_tasks")
        at_least(self, 0, "gpus_per_actor", "cpus_per_actor")
        at_least(self, -1, "max_restarts", "max_task_retries")
        self.custom_resources()
        return self

    def custom_resources(self) -> dict[str, float]:
        """`actor_resources` as Ray's `resources` option ({} when none); a bad entry is a SettingError."""
        out: dict[str, float] = {}
        for item in self.actor_resources:
            name, sep, amount = (part.strip() for part in item.partition("="))
            try:
                value = float(amount)
            except ValueError:
                value = float("nan")
            if not sep or not name or not 0 <= value < float("inf"):
                raise SettingError(
                    "actor_resources", f"{item!r}: expected NAME=AMOUNT with AMOUNT >= 0, e.g. accelerator=1"
                )
            if name in RAY_BUILTIN_RESOURCES:
                raise SettingError(
                    "actor_resources", f"{name} is not a custom resource (--cpus-per-actor, --gpus-per-actor)"
                )
            out[name] = value
        return out

    def num_gpus(self) -> float:
        """GPUs each actor asks Ray for; None resolves against the connected cluster."""
        if self.gpus_per_actor is not None:
            return self.gpus_per_actor
        import ray

        return 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0

    def actor_options(self) -> dict[str, Any]:
        """`map_batches` keyword arguments of an actor-pool stage of this shape."""
        import ray

        return {
            "batch_size": self.block_rows,
            "compute": ray.data.ActorPoolStrategy(size=self.actors),
            "num_gpus": self.num_gpus(),
            "num_cpus": self.cpus_per_actor,
            **({"resources": resources} if (resources := self.custom_resources()) else {}),
            # Ray Data's default is to restart and retry forever: a pair that kills its actor would loop.
            "max_restarts": self.max_restarts,
            "max_task_retries": self.max_task_retries,
        }

    def counted_retry_options(self) -> dict[str, Any]:
        """Ray-level retries for a stage whose actors count their own deaths (the scoring stage: markers,
        `actors.reranker.quarantine`, where `max_task_retries` is the budget, counted only for deaths on a
        node still alive). Ray's counters cannot tell a lost node from a block that kills its actor, and
        they spend a retry on every `ActorUnavailableError` while the actor restarts elsewhere, so here
        they are generous: blocks are retried until the markers' budget stops them, and the actor gets
        `LOST_NODE_RESTARTS` restarts beyond `max_restarts` for the nodes the cluster loses."""
        restarts = -1 if self.max_restarts == -1 else self.max_restarts + LOST_NODE_RESTARTS
        return {"max_restarts": restarts, "max_task_retries": -1}


# Restarts of a scoring actor allowed for lost nodes, beyond --max-restarts (each is a preempted or failed
# machine: a run that loses more nodes than this is better stopped and resumed).
LOST_NODE_RESTARTS = 16
