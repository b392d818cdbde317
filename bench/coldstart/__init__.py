"""The headline benchmark: a fleet of cold nodes on the real stack, against
what sites do today (an empty writable depot that installs and precompiles).

    python -m bench.coldstart            # the full run: the real-packages stack
    python -m bench.coldstart --quick    # CI: the small stack, 2 reps, K = 2 (< 5 min)

Writes bench/results/coldstart.md, .json and .png (or --out PREFIX).  Needs root
(``cas exec`` mounts in private namespaces), Julia 1.5.3 (tools/setup), squid and
the package bundles of ../shared/julia-packages.  The store, the nodes and the site
live in a work folder of the benchmark's own (--work, default
/var/cache/casstore/bench/coldstart[-quick]); sysimages come from the builder's
cache (/var/cache/casstore/build).  Modules: stacks (what is published and how a
node is staged), nodes (origin, link, squid, mount and writable nodes, the checks),
scenarios (the issue's table), report (figures, Markdown, chart), inner (runs in
each node's namespace), job.jl (the timing wrapper of the job).
"""
