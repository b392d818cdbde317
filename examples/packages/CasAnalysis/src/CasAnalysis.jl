"""
    CasAnalysis

The example analysis, shipped the way sites should ship one: as a package that
goes into the system image, driven by a job script of two lines.  (A job that
defines this code in a script, in `Main`, compiles it again in every process:
Julia 1.5 keeps no native code for `Main`; see docs/JULIA.md.)

Events (CasEvents) -> anti-kt jets (CasJets) -> LorentzVectors four-vectors with
StaticArrays three-momenta -> a DataFrame grouped by jet multiplicity -> a
StatsBase histogram of jet pt -> a JSON summary and a `CHECKSUM <hex>` line.
"""
module CasAnalysis

using CasEvents: generate_events, read_events
using CasJets: AntiKt, cluster, inclusive_jets
using CasHist: fnv1a
import LorentzVectors
using StaticArrays: SVector
using DataFrames: DataFrame, combine, groupby, nrow
using StatsBase: Histogram, fit
using Statistics: mean
import JSON

export analyse, main

const FourVector = LorentzVectors.LorentzVector{Float64}
const PT_BINS = 0.0:20.0:400.0

"Anti-kt (R = 0.4) jets above 5 GeV of one event, as LorentzVectors four-vectors."
function jets(event)
    js = inclusive_jets(cluster(event, AntiKt(), 0.4); ptmin=5.0)
    return [FourVector(j.t, j.x, j.y, j.z) for j in js]
end

"One row per jet: event number, jet multiplicity, pt, pseudorapidity, mass."
function jet_table(events)
    df = DataFrame(event=Int[], njets=Int[], pt=Float64[], eta=Float64[], mass=Float64[])
    for (i, event) in enumerate(events)
        js = jets(event)
        for j in js
            p = SVector(j.x, j.y, j.z)
            pt = sqrt(p[1]^2 + p[2]^2)
            m2 = j.t^2 - sum(p .* p)
            push!(df, (i, length(js), pt, asinh(p[3] / pt), sqrt(max(m2, 0.0))))
        end
    end
    return df
end

"The summary of a list of events (a Dict ready for JSON)."
function analyse(events)
    df = jet_table(events)
    byn = combine(groupby(df, :njets; sort=true), nrow => :jets, :pt => mean => :mean_pt,
                  :mass => maximum => :max_mass)
    h = fit(Histogram, df.pt, PT_BINS)
    rows = [Dict("njets" => r.njets, "jets" => r.jets,
                 "mean_pt" => round(r.mean_pt; sigdigits=8),
                 "max_mass" => round(r.max_mass; sigdigits=8)) for r in eachrow(byn)]
    return Dict("events" => length(events), "jets" => size(df, 1), "by_njets" => rows,
                "pt_hist" => Dict("edges" => collect(PT_BINS), "counts" => h.weights))
end

"The job: `main([EVENTFILE])` (no file: 300 generated events) prints JSON and a checksum."
function main(args::AbstractVector{<:AbstractString})
    events = isempty(args) ? generate_events(300, 20261125) : read_events(args[1])
    text = JSON.json(analyse(events))
    println(text)
    println("CHECKSUM ", string(fnv1a(text); base=16, pad=16))
    return nothing
end

end # module
