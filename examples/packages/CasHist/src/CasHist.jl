"""
    CasHist

Weighted 1-D/2-D histograms over pluggable binnings, running statistics, and
a content digest so two runs can be compared bit for bit.
"""
module CasHist

export UniformBins, VariableBins, Hist1D, Hist2D, RunningStats, binindex,
       nbins, edges, bincenters, integral, hist_mean, hist_std, stats_mean,
       stats_var, stats_std, digest, fnv1a, normalized

abstract type Binning end

"`n` equal bins on [lo, hi)."
struct UniformBins{T<:Real} <: Binning
    lo::T
    hi::T
    n::Int
    function UniformBins{T}(lo, hi, n) where {T}
        hi > lo || throw(ArgumentError("hi must exceed lo"))
        n > 0 || throw(ArgumentError("need at least one bin"))
        return new{T}(lo, hi, n)
    end
end
UniformBins(lo::Real, hi::Real, n::Integer) = UniformBins{float(promote_type(typeof(lo), typeof(hi)))}(lo, hi, n)

"Bins between sorted `edges`."
struct VariableBins{T<:Real} <: Binning
    edges::Vector{T}
    function VariableBins{T}(e::AbstractVector) where {T}
        length(e) >= 2 || throw(ArgumentError("need two edges"))
        issorted(e; lt=<=) || throw(ArgumentError("edges must increase"))
        return new{T}(collect(T, e))
    end
end
VariableBins(e::AbstractVector{T}) where {T<:Real} = VariableBins{float(T)}(e)

nbins(b::UniformBins) = b.n
nbins(b::VariableBins) = length(b.edges) - 1
edges(b::UniformBins{T}) where {T} = [b.lo + (b.hi - b.lo) * T(i) / b.n for i in 0:b.n]
edges(b::VariableBins) = copy(b.edges)
bincenters(b::Binning) = (e = edges(b); [(e[i] + e[i+1]) / 2 for i in 1:nbins(b)])

"Bin index in 1:nbins, 0 for underflow, nbins+1 for overflow (NaN → overflow)."
function binindex(b::UniformBins{T}, x::Real) where {T}
    isnan(x) && return b.n + 1
    x < b.lo && return 0
    x >= b.hi && return b.n + 1
    i = floor(Int, (T(x) - b.lo) / (b.hi - b.lo) * b.n) + 1
    return min(i, b.n)
end
function binindex(b::VariableBins, x::Real)
    isnan(x) && return nbins(b) + 1
    return searchsortedlast(b.edges, x) |> i -> i >= length(b.edges) ? nbins(b) + 1 : i
end

"1-D histogram with weights of type `W`; slot 1 is underflow, end is overflow."
struct Hist1D{W<:Real,B<:Binning}
    binning::B
    sumw::Vector{W}
    sumw2::Vector{W}
end
Hist1D{W}(b::B) where {W,B<:Binning} = Hist1D{W,B}(b, zeros(W, nbins(b) + 2), zeros(W, nbins(b) + 2))
Hist1D(b::Binning) = Hist1D{Float64}(b)

function Base.push!(h::Hist1D{W}, x::Real, w::Real=one(W)) where {W}
    k = binindex(h.binning, x) + 1
    h.sumw[k] += W(w)
    h.sumw2[k] += W(w)^2
    return h
end
Base.append!(h::Hist1D, xs) = (foreach(x -> push!(h, x), xs); h)

function Base.merge(a::Hist1D{W,B}, b::Hist1D{W,B}) where {W,B}
    edges(a.binning) == edges(b.binning) || throw(ArgumentError("binnings differ"))
    return Hist1D{W,B}(a.binning, a.sumw .+ b.sumw, a.sumw2 .+ b.sumw2)
end

counts(h::Hist1D) = h.sumw[2:end-1]
integral(h::Hist1D; overflow::Bool=false) = overflow ? sum(h.sumw) : sum(counts(h))

function normalized(h::Hist1D{W,B}) where {W,B}
    s = integral(h)
    s == 0 && return h
    return Hist1D{W,B}(h.binning, h.sumw ./ s, h.sumw2 ./ s^2)
end

function hist_mean(h::Hist1D)
    c = bincenters(h.binning)
    w = counts(h)
    s = sum(w)
    return s == 0 ? zero(eltype(c)) : sum(c .* w) / s
end

function hist_std(h::Hist1D)
    c = bincenters(h.binning)
    w = counts(h)
    s = sum(w)
    s == 0 && return zero(eltype(c))
    m = sum(c .* w) / s
    return sqrt(sum(w .* (c .- m) .^ 2) / s)
end

"2-D histogram; (nx+2)×(ny+2) including under/overflow rows and columns."
struct Hist2D{W<:Real,BX<:Binning,BY<:Binning}
    xbins::BX
    ybins::BY
    sumw::Matrix{W}
end
Hist2D{W}(bx::Binning, by::Binning) where {W} =
    Hist2D{W,typeof(bx),typeof(by)}(bx, by, zeros(W, nbins(bx) + 2, nbins(by) + 2))
Hist2D(bx::Binning, by::Binning) = Hist2D{Float64}(bx, by)

function Base.push!(h::Hist2D{W}, x::Real, y::Real, w::Real=one(W)) where {W}
    h.sumw[binindex(h.xbins, x) + 1, binindex(h.ybins, y) + 1] += W(w)
    return h
end
integral(h::Hist2D) = sum(@view h.sumw[2:end-1, 2:end-1])

"Welford running mean/variance, also min and max."
mutable struct RunningStats{T<:AbstractFloat}
    n::Int
    mean::T
    m2::T
    min::T
    max::T
end
RunningStats{T}() where {T} = RunningStats{T}(0, zero(T), zero(T), typemax(T), typemin(T))
RunningStats() = RunningStats{Float64}()

function Base.push!(s::RunningStats{T}, x::Real) where {T}
    v = T(x)
    s.n += 1
    d = v - s.mean
    s.mean += d / s.n
    s.m2 += d * (v - s.mean)
    s.min = min(s.min, v)
    s.max = max(s.max, v)
    return s
end
stats_mean(s::RunningStats) = s.mean
stats_var(s::RunningStats) = s.n > 1 ? s.m2 / (s.n - 1) : zero(s.m2)
stats_std(s::RunningStats) = sqrt(stats_var(s))

"64-bit FNV-1a over bytes; `h` chains digests."
function fnv1a(data::AbstractVector{UInt8}, h::UInt64=0xcbf29ce484222325)
    for b in data
        h = (h ⊻ b) * 0x00000100000001b3
    end
    return h
end
fnv1a(s::AbstractString, h::UInt64=0xcbf29ce484222325) = fnv1a(Vector{UInt8}(codeunits(s)), h)

"""
    digest(h, [seed])

Digest of the histogram's bin contents, rounded to `sig` significant digits
so the last-bit differences of CPU-specific code paths do not change it.
"""
function digest(h::Hist1D, seed::UInt64=0xcbf29ce484222325; sig::Int=9)
    d = fnv1a(string(nbins(h.binning)), seed)
    for w in h.sumw
        d = fnv1a(string(round(Float64(w); sigdigits=sig)), d)
    end
    return d
end
function digest(h::Hist2D, seed::UInt64=0xcbf29ce484222325; sig::Int=9)
    d = fnv1a(string(size(h.sumw)), seed)
    for w in h.sumw
        d = fnv1a(string(round(Float64(w); sigdigits=sig)), d)
    end
    return d
end
function digest(s::RunningStats, seed::UInt64=0xcbf29ce484222325; sig::Int=9)
    d = fnv1a(string(s.n), seed)
    for v in (s.mean, stats_var(s), s.min, s.max)
        d = fnv1a(string(round(Float64(v); sigdigits=sig)), d)
    end
    return d
end

end # module
