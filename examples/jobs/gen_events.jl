# Write a deterministic toy event file: julia gen_events.jl OUT [NEVENTS] [SEED]
using CasEvents

nev = length(ARGS) >= 2 ? parse(Int, ARGS[2]) : 300
seed = length(ARGS) >= 3 ? parse(Int, ARGS[3]) : 20261125
write_events(ARGS[1], generate_events(nev, seed))
