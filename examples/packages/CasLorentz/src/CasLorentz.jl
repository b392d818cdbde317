"""
    CasLorentz

Minimal four-vectors for the casstore HEP example. Parametric on the element
type so Float32 and Float64 event data both work (and so the example has real
specialisation work for the compiler).
"""
module CasLorentz

export LorentzVector, px, py, pz, energy, pt, pt2, mass, mass2, momentum,
       rapidity, eta, phi, deltaphi, deltar2, deltar, fromptetaphim, boost,
       costheta

struct LorentzVector{T<:AbstractFloat}
    t::T
    x::T
    y::T
    z::T
end

LorentzVector(t::Real, x::Real, y::Real, z::Real) =
    LorentzVector(float.(promote(t, x, y, z))...)
LorentzVector{T}(v::LorentzVector) where {T} = LorentzVector{T}(v.t, v.x, v.y, v.z)

Base.zero(::Type{LorentzVector{T}}) where {T} = LorentzVector{T}(0, 0, 0, 0)
Base.zero(v::LorentzVector) = zero(typeof(v))
Base.eltype(::Type{LorentzVector{T}}) where {T} = T

Base.:+(a::LorentzVector, b::LorentzVector) =
    LorentzVector(a.t + b.t, a.x + b.x, a.y + b.y, a.z + b.z)
Base.:-(a::LorentzVector, b::LorentzVector) =
    LorentzVector(a.t - b.t, a.x - b.x, a.y - b.y, a.z - b.z)
Base.:-(a::LorentzVector) = LorentzVector(-a.t, -a.x, -a.y, -a.z)
Base.:*(s::Real, a::LorentzVector) = LorentzVector(s * a.t, s * a.x, s * a.y, s * a.z)
Base.:*(a::LorentzVector, s::Real) = s * a
Base.:/(a::LorentzVector, s::Real) = LorentzVector(a.t / s, a.x / s, a.y / s, a.z / s)
Base.isapprox(a::LorentzVector, b::LorentzVector; kw...) =
    all(isapprox.((a.t, a.x, a.y, a.z), (b.t, b.x, b.y, b.z); kw...))

"Minkowski product with signature (+,-,-,-)."
dot4(a::LorentzVector, b::LorentzVector) = a.t * b.t - a.x * b.x - a.y * b.y - a.z * b.z

energy(v::LorentzVector) = v.t
px(v::LorentzVector) = v.x
py(v::LorentzVector) = v.y
pz(v::LorentzVector) = v.z
pt2(v::LorentzVector) = v.x * v.x + v.y * v.y
pt(v::LorentzVector) = sqrt(pt2(v))
momentum(v::LorentzVector) = sqrt(pt2(v) + v.z * v.z)
mass2(v::LorentzVector) = dot4(v, v)

"Signed mass: negative for space-like vectors (numerical noise on massless ones)."
function mass(v::LorentzVector)
    m2 = mass2(v)
    return m2 < 0 ? -sqrt(-m2) : sqrt(m2)
end

"Azimuth in [0, 2π)."
function phi(v::LorentzVector{T}) where {T}
    (v.x == 0 && v.y == 0) && return zero(T)
    p = atan(v.y, v.x)
    return p < 0 ? p + 2 * T(π) : p
end

"Rapidity; a large finite value along the beam so clustering stays defined."
function rapidity(v::LorentzVector{T}) where {T}
    big = T(1e5)
    pt2(v) == 0 && return copysign(big, v.z)
    num = v.t + v.z
    den = v.t - v.z
    (den <= 0 || num <= 0) && return copysign(big, v.z)
    return log(num / den) / 2
end

function eta(v::LorentzVector{T}) where {T}
    p = momentum(v)
    p == abs(v.z) && return copysign(T(1e5), v.z)
    return log((p + v.z) / (p - v.z)) / 2
end

costheta(v::LorentzVector) = (p = momentum(v); p == 0 ? one(p) : v.z / p)

function deltaphi(a::LorentzVector, b::LorentzVector)
    d = abs(phi(a) - phi(b))
    return d > π ? 2 * oftype(d, π) - d : d
end

deltar2(a::LorentzVector, b::LorentzVector) =
    (rapidity(a) - rapidity(b))^2 + deltaphi(a, b)^2
deltar(a::LorentzVector, b::LorentzVector) = sqrt(deltar2(a, b))

"Build a vector from collider coordinates (pt, pseudorapidity, azimuth, mass)."
function fromptetaphim(pt::T, eta::T, phi::T, m::T) where {T<:AbstractFloat}
    x = pt * cos(phi)
    y = pt * sin(phi)
    z = pt * sinh(eta)
    e = sqrt(x * x + y * y + z * z + m * m)
    return LorentzVector{T}(e, x, y, z)
end
fromptetaphim(pt, eta, phi, m) = fromptetaphim(float.(promote(pt, eta, phi, m))...)

"Boost `v` by velocity `β` (a 3-tuple, |β| < 1)."
function boost(v::LorentzVector{T}, β::NTuple{3,<:Real}) where {T}
    bx, by, bz = T(β[1]), T(β[2]), T(β[3])
    b2 = bx * bx + by * by + bz * bz
    b2 == 0 && return v
    γ = 1 / sqrt(1 - b2)
    bp = bx * v.x + by * v.y + bz * v.z
    g2 = (γ - 1) / b2
    k = g2 * bp + γ * v.t
    return LorentzVector{T}(γ * (v.t + bp), v.x + k * bx, v.y + k * by, v.z + k * bz)
end

function Base.show(io::IO, v::LorentzVector)
    print(io, "LorentzVector(t=", v.t, ", x=", v.x, ", y=", v.y, ", z=", v.z, ")")
end

end # module
