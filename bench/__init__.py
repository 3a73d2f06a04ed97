"""
ocicache's benchmark harness: C{bench/run} compares ocicache with CNCF
distribution in proxy mode, both in front of the same loopback upstream.

  - L{bench.rig}: the processes (upstream, counting hops, both mirrors)
  - L{bench.clients}: load generators (curl, per-process fetchers, slow
    readers, wrk) and the RSS sampler
  - L{bench.scenarios}: the five measurements
  - L{bench.report}: comparisons, Markdown tables, JSON
  - L{bench.main}: the command line

It reuses C{tests/ocitest} (images, registry, hop, daemon, containerd);
C{bench/run} puts C{tests/} on C{sys.path} for it.
"""
