"""The Ray engine: one job across the workers of a Ray cluster (`batchrun.ray.driver`, each
worker `batchrun.ray.worker`), with the cluster's shared pace, stop and budget on one desk
(`batchrun.ray.desk`).

`batchrun.ray.run(job, dataset=ds)` runs a job over a Ray Dataset; `ChatStage` is the stage
it maps with, for a pipeline of one's own.
"""

from .driver import on_loopback, run
from .worker import ChatStage

__all__ = ["ChatStage", "on_loopback", "run"]
