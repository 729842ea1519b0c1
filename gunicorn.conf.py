"""gunicorn's settings for the web service; gunicorn reads ./gunicorn.conf.py by itself, so Procfile,
docker-compose.yml, the Dockerfile and the benches all run with it (flags on a command line still win).

Threads, not sync workers: a sync worker leaves the requests it cannot take yet in the kernel's accept
queue, invisible to the application, where under saturation they waited for seconds (p99 1.76 s at 64
connections). Here each worker takes every connection at once and queues its requests for WEB_THREADS
threads, noting when (recsite.gunicorn_worker), so that recsite.shedding can answer 503 to a request that
waited more than SHED_QUEUE_SECONDS. Few threads: the work is mostly Python under one interpreter lock, so
more threads add switching but little throughput, and each holds its own database connection."""

import os

workers = int(os.environ.get("WEB_CONCURRENCY", 2))
worker_class = "recsite.gunicorn_worker.QueueTimedThreadWorker"
threads = int(os.environ.get("WEB_THREADS", 4))
