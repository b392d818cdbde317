# Cross-check CasJets' O(N²) clustering against a brute-force O(N³) reference
# on generated events; prints "CLUSTERING OK <n>" or throws.
using CasLorentz, CasJets, CasEvents

weight(::AntiKt, p2) = 1 / p2
weight(::Kt, p2) = p2
weight(::CambridgeAachen, p2) = one(p2)

function brute(ps::Vector{LorentzVector{Float64}}, alg, R)
    act = copy(ps)
    out = LorentzVector{Float64}[]
    while !isempty(act)
        best, bi, bj = Inf, 0, 0
        for i in eachindex(act)
            di = weight(alg, pt2(act[i]))
            di < best && ((best, bi, bj) = (di, i, 0))
            for j in i+1:length(act)
                dij = min(weight(alg, pt2(act[i])), weight(alg, pt2(act[j]))) *
                      deltar2(act[i], act[j]) / R^2
                dij < best && ((best, bi, bj) = (dij, i, j))
            end
        end
        if bj == 0
            push!(out, act[bi]); deleteat!(act, bi)
        else
            act[bi] = act[bi] + act[bj]; deleteat!(act, bj)
        end
    end
    return sort!(out; by=pt, rev=true)
end

let r = SplitMix64(99), n = 0
    for k in 1:25, alg in (AntiKt(), Kt(), CambridgeAachen())
        ev = generate_event(r)
        ev = ev[1:min(end, 60)]
        fast = inclusive_jets(cluster(ev, alg, 0.4))
        ref = brute(ev, alg, 0.4)
        length(fast) == length(ref) || error("jet count differs: $alg event $k")
        all(isapprox(a, b; rtol=1e-9) for (a, b) in zip(fast, ref)) ||
            error("jets differ: $alg event $k")
        n += 1
    end
    println("CLUSTERING OK ", n)
end
