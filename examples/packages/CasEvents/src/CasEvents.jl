"""
    CasEvents

A toy collider-event generator and a text event-file format.

The generator uses its own SplitMix64 stream and only +, -, *, / and sqrt
(all correctly rounded in IEEE 754), so the same seed gives bit-identical
events on every CPU and every Julia build: no libm, no `rand()`.
"""
module CasEvents

using CasLorentz

export SplitMix64, next!, uniform, generate_event, generate_events,
       write_events, read_events, EVENT_FILE_MAGIC

const EVENT_FILE_MAGIC = "# casevents 1"
const PION_MASS = 0.13957

"SplitMix64 (Steele, Lea, Flood 2014): tiny, fast, good enough for toys."
mutable struct SplitMix64
    state::UInt64
end

function next!(r::SplitMix64)
    r.state += 0x9e3779b97f4a7c15
    z = r.state
    z = (z ⊻ (z >> 30)) * 0xbf58476d1ce4e5b9
    z = (z ⊻ (z >> 27)) * 0x94d049bb133111eb
    return z ⊻ (z >> 31)
end

"Uniform in [0, 1) with 53 random bits."
uniform(r::SplitMix64) = Float64(next!(r) >> 11) * 0x1.0p-53
"Uniform integer in lo:hi (modulo bias is irrelevant here)."
uniform(r::SplitMix64, lo::Int, hi::Int) = lo + Int(next!(r) % UInt64(hi - lo + 1))

"Random direction with |cosθ| < cmax, by rejection from the unit ball."
function direction(r::SplitMix64, cmax::Float64)
    while true
        x, y, z = 2uniform(r) - 1, 2uniform(r) - 1, 2uniform(r) - 1
        s = x * x + y * y + z * z
        (s < 1e-4 || s >= 1) && continue
        n = sqrt(s)
        abs(z / n) < cmax && return (x / n, y / n, z / n)
    end
end

function particle(p::Float64, d::NTuple{3,Float64}, m::Float64)
    x, y, z = p * d[1], p * d[2], p * d[3]
    return LorentzVector(sqrt(x * x + y * y + z * z + m * m), x, y, z)
end

"A smeared direction around `axis` with spread `σ`."
function around(r::SplitMix64, axis::NTuple{3,Float64}, σ::Float64)
    b = direction(r, 1.0)
    u = uniform(r)
    x, y, z = axis[1] + σ * u * b[1], axis[2] + σ * u * b[2], axis[3] + σ * u * b[3]
    n = sqrt(x * x + y * y + z * z)
    return (x / n, y / n, z / n)
end

"One event: 2-4 collimated sprays (power-law energies) plus soft background."
function generate_event(r::SplitMix64)
    out = LorentzVector{Float64}[]
    for _ in 1:uniform(r, 2, 4)
        axis = direction(r, 0.9)
        ejet = min(20.0 / sqrt(1.0 - uniform(r)), 800.0)
        n = uniform(r, 4, 18)
        fr = [0.05 + uniform(r) for _ in 1:n]
        tot = sum(fr)
        for f in fr
            push!(out, particle(ejet * f / tot, around(r, axis, 0.12), PION_MASS))
        end
    end
    for _ in 1:uniform(r, 20, 80)
        push!(out, particle(0.3 + 2.0 * uniform(r), direction(r, 0.98), PION_MASS))
    end
    return out
end

generate_events(n::Integer, seed::Integer) =
    (r = SplitMix64(UInt64(seed)); [generate_event(r) for _ in 1:n])

"Write events as text: a magic line, then `event <i> <n>` and n `E px py pz` lines."
function write_events(io::IO, events::AbstractVector)
    println(io, EVENT_FILE_MAGIC)
    for (i, ev) in enumerate(events)
        println(io, "event ", i, ' ', length(ev))
        for p in ev
            println(io, energy(p), ' ', px(p), ' ', py(p), ' ', pz(p))
        end
    end
    return nothing
end
write_events(path::AbstractString, events) = open(io -> write_events(io, events), path, "w")

"Read an event file into vectors of `LorentzVector{T}`."
function read_events(io::IO, ::Type{T}=Float64) where {T<:AbstractFloat}
    readline(io) == EVENT_FILE_MAGIC || error("not a casevents file")
    events = Vector{LorentzVector{T}}[]
    while !eof(io)
        head = split(readline(io))
        (length(head) == 3 && head[1] == "event") || error("bad event header: $head")
        n = parse(Int, head[3])
        ev = Vector{LorentzVector{T}}(undef, n)
        for k in 1:n
            f = split(readline(io))
            ev[k] = LorentzVector{T}(parse(T, f[1]), parse(T, f[2]), parse(T, f[3]), parse(T, f[4]))
        end
        push!(events, ev)
    end
    return events
end
read_events(path::AbstractString, ::Type{T}=Float64) where {T} =
    open(io -> read_events(io, T), path)

end # module
