"""
ocicache's benchmark harness: C{bench/run} compares ocicache with CNCF
distribution in proxy mode, both in front of the same loopback upstream,
with nginx (sendfile) serving the same blob file as the physical limit.

  - L{bench.rig}: the processes (upstream, counting hops, both mirrors,
    nginx, the TLS certificate)
  - L{bench.clients}: load generators (curl, per-process fetchers, slow
    readers, wrk, time-bounded blob loads, idle connections), the RSS
    sampler and CPU time
  - L{bench.scenarios}: the five measurements and the targets
  - L{bench.scale_out}: C{--scale-out}, N nodes of each on one radosgw
    (ocicache's fleet on Redis, without and with a local tier;
    distribution on its S3 driver)
  - L{bench.report}: comparisons, Markdown tables, JSON
  - L{bench.plot}: PNG charts (C{--plot}, optional matplotlib)
  - L{bench.main}: the command line

It reuses C{tests/ocitest} (images, registry, hop, daemon, containerd);
C{bench/run} puts C{tests/} on C{sys.path} for it.
"""
