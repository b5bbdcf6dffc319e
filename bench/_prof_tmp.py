import asyncio, tempfile, time, signal, pstats
from pathlib import Path
from bench.ingest import HOST, BenchServer, admin_connect, env_for, requests_for, webhook_body, workload
from bench.loadgen import run_load
from bench.paced_cpu import CUSTOMERS
from server.app.embedded import EmbeddedStores, free_port
async def main():
    wd = Path(tempfile.mkdtemp(prefix="prof-")); stores = EmbeddedStores(wd/"stores", lock=False).start()
    try:
        port = free_port()
        s = BenchServer("igsync", env_for(stores, port, "prof", {"BENCH_CLIENT_BULK_WRITE": "1", }), wd)
        await admin_connect(port)
        now_ms = int(time.time()*1000)
        warm = [webhook_body(f"warm.{i}", "hello", c, echo=False, ts_ms=now_ms) for i, c in enumerate(CUSTOMERS)]
        await run_load(HOST, port, requests_for(warm, port), 32)
        bodies = workload(1200, CUSTOMERS, echo_share=0.3, redelivery_share=0.1, seed=107, tag="p")
        s.signal(signal.SIGUSR1)
        await run_load(HOST, port, requests_for(bodies, port), 32, rate=60)
        s.counts()
        [print(v, k) for k, v in sorted(s.last_named.items(), key=lambda kv: -kv[1])]
        s.stop()
    finally:
        stores.stop()
asyncio.run(main())
