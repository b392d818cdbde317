"""
    CasJets

Sequential-recombination jet clustering (anti-kt, kt, Cambridge/Aachen) with
the O(N²) nearest-neighbour bookkeeping: each pseudojet remembers its
geometric nearest neighbour, and min over i of kwᵢ·min(ΔR²ᵢ,R²) equals the
smallest of all dᵢⱼ and dᵢB, so one scan per step finds the next action.
"""
module CasJets

using CasLorentz

export JetAlgorithm, AntiKt, Kt, CambridgeAachen, EScheme, PtScheme,
       ClusterSequence, cluster, inclusive_jets, njets, constituents

abstract type JetAlgorithm end
"Anti-kt: kt weight 1/pt²."
struct AntiKt <: JetAlgorithm end
"Inclusive kt: kt weight pt²."
struct Kt <: JetAlgorithm end
"Cambridge/Aachen: purely geometric."
struct CambridgeAachen <: JetAlgorithm end

ktweight(::AntiKt, p2::T) where {T} = p2 > 0 ? inv(p2) : floatmax(T)
ktweight(::Kt, p2) = p2
ktweight(::CambridgeAachen, p2) = one(p2)

abstract type RecombinationScheme end
"Four-momentum addition."
struct EScheme <: RecombinationScheme end
"pt-weighted rapidity/azimuth, massless result."
struct PtScheme <: RecombinationScheme end

recombine(::EScheme, a::LorentzVector, b::LorentzVector) = a + b
function recombine(::PtScheme, a::LorentzVector{T}, b::LorentzVector{T}) where {T}
    pa, pb = pt(a), pt(b)
    p = pa + pb
    y = (pa * rapidity(a) + pb * rapidity(b)) / p
    ϕa, ϕb = phi(a), phi(b)
    ϕb - ϕa > π && (ϕb -= 2 * T(π))
    ϕa - ϕb > π && (ϕa -= 2 * T(π))
    ϕ = (pa * ϕa + pb * ϕb) / p
    return fromptetaphim(p, y, ϕ, zero(T))
end

"One clustering step: `parent2 == 0` means parent1 became a final jet."
struct Step{T}
    parent1::Int
    parent2::Int
    child::Int
    dij::T
end

struct ClusterSequence{T,A<:JetAlgorithm,S<:RecombinationScheme}
    algorithm::A
    scheme::S
    R::T
    pseudojets::Vector{LorentzVector{T}}
    history::Vector{Step{T}}
    nparticles::Int
end

"Working arrays of the active pseudojets, compacted after every step."
mutable struct Active{T}
    n::Int
    rap::Vector{T}
    phi::Vector{T}
    kw::Vector{T}
    id::Vector{Int}
    nn::Vector{Int}
    nndist::Vector{T}
end

@inline function geodist(a::Active{T}, i::Int, j::Int) where {T}
    dy = a.rap[i] - a.rap[j]
    dp = abs(a.phi[i] - a.phi[j])
    dp > π && (dp = 2 * T(π) - dp)
    return dy * dy + dp * dp
end

function find_nn!(a::Active{T}, i::Int, R2::T) where {T}
    best, bestj = R2, 0
    for j in 1:a.n
        j == i && continue
        d = geodist(a, i, j)
        if d < best
            best, bestj = d, j
        end
    end
    a.nn[i] = bestj
    a.nndist[i] = best
    return nothing
end

function set_slot!(a::Active, i::Int, alg::JetAlgorithm, v::LorentzVector, id::Int)
    a.rap[i] = rapidity(v)
    a.phi[i] = phi(v)
    a.kw[i] = ktweight(alg, pt2(v))
    a.id[i] = id
    return nothing
end

"Move the last active slot into slot `i` and shrink by one."
function remove_slot!(a::Active, i::Int)
    last = a.n
    if i != last
        a.rap[i], a.phi[i], a.kw[i] = a.rap[last], a.phi[last], a.kw[last]
        a.id[i], a.nn[i], a.nndist[i] = a.id[last], a.nn[last], a.nndist[last]
        for k in 1:last-1
            a.nn[k] == last && (a.nn[k] = i)
        end
    end
    a.n -= 1
    return nothing
end

"""
    cluster(particles, algorithm, R; scheme=EScheme()) -> ClusterSequence

Cluster all `particles` (any vector of `LorentzVector`s) into inclusive jets.
"""
function cluster(particles::AbstractVector{LorentzVector{T}}, alg::JetAlgorithm,
                 R::Real; scheme::RecombinationScheme=EScheme()) where {T}
    N = length(particles)
    R2 = T(R)^2
    jets = collect(particles)
    history = Step{T}[]
    sizehint!(jets, 2N)
    a = Active{T}(N, zeros(T, N), zeros(T, N), zeros(T, N), zeros(Int, N),
                  zeros(Int, N), zeros(T, N))
    for i in 1:N
        set_slot!(a, i, alg, jets[i], i)
    end
    for i in 1:N
        find_nn!(a, i, R2)
    end
    while a.n > 0
        step!(a, alg, scheme, jets, history, R2)
    end
    return ClusterSequence(alg, scheme, T(R), jets, history, N)
end

function step!(a::Active{T}, alg, scheme, jets, history, R2::T) where {T}
    ibest, dbest = 1, typemax(T)
    for i in 1:a.n
        d = a.kw[i] * a.nndist[i]
        if d < dbest
            ibest, dbest = i, d
        end
    end
    j = a.nn[ibest]
    if j == 0
        push!(history, Step{T}(a.id[ibest], 0, 0, dbest / R2))
        invalidate!(a, ibest, 0)
        remove_slot!(a, ibest)
        refresh!(a, 0, R2)
        return nothing
    end
    i, j = minmax(ibest, j)
    push!(jets, recombine(scheme, jets[a.id[i]], jets[a.id[j]]))
    push!(history, Step{T}(a.id[i], a.id[j], length(jets), dbest / R2))
    invalidate!(a, i, j)
    set_slot!(a, i, alg, jets[end], length(jets))
    remove_slot!(a, j)
    refresh!(a, i, R2)
    return nothing
end

"Mark (nn = -1) every slot whose nearest neighbour is `i` or `j`."
function invalidate!(a::Active, i::Int, j::Int)
    for k in 1:a.n
        (a.nn[k] == i || (j != 0 && a.nn[k] == j)) && (a.nn[k] = -1)
    end
    return nothing
end

"""
Recompute invalidated nearest neighbours; if `new != 0`, slot `new` holds a
freshly merged pseudojet that may be the new nearest neighbour of others.
"""
function refresh!(a::Active{T}, new::Int, R2::T) where {T}
    new != 0 && find_nn!(a, new, R2)
    for k in 1:a.n
        k == new && continue
        if a.nn[k] == -1
            find_nn!(a, k, R2)
        elseif new != 0
            d = geodist(a, k, new)
            if d < a.nndist[k]
                a.nn[k], a.nndist[k] = new, d
            end
        end
    end
    return nothing
end

"Final jets with pt ≥ ptmin, hardest first."
function inclusive_jets(cs::ClusterSequence{T}; ptmin::Real=0) where {T}
    out = LorentzVector{T}[]
    for s in cs.history
        if s.parent2 == 0
            j = cs.pseudojets[s.parent1]
            pt(j) >= ptmin && push!(out, j)
        end
    end
    sort!(out; by=pt, rev=true)
    return out
end

njets(cs::ClusterSequence; ptmin::Real=0) = length(inclusive_jets(cs; ptmin=ptmin))

"Indices of the original particles that make up pseudojet `id`."
function constituents(cs::ClusterSequence, id::Int)
    id <= cs.nparticles && return [id]
    for s in cs.history
        s.child == id && return vcat(constituents(cs, s.parent1), constituents(cs, s.parent2))
    end
    return Int[]
end

end # module
