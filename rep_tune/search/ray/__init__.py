"""The search on Ray (``pip install rep-tune[ray]``): every module here imports Ray, nothing
outside this package does.

    executor.py       RayExecutor: the search's one trial loop, trainings as Ray tasks
    cluster.py        which Ray: a local instance or a cluster (--address), probed in bounded time
    storage_proxy.py  the driver's study served to Ray workers over Optuna's gRPC storage proxy
    tune.py           Ray Tune: RepSearcher (the constrained study as a Tune Searcher), rep_trainable
"""
