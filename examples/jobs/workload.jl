# Precompile workload for the example system image: run the real job on a
# small generated event file so --trace-compile records what jobs need.
using CasEvents

let path = tempname()
    write_events(path, generate_events(40, 1))
    empty!(ARGS)
    push!(ARGS, path)
    include(joinpath(@__DIR__, "jetjob.jl"))
    rm(path)
end
