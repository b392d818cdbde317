# Example HEP job: read an event file, cluster anti-kt R=0.4 jets, fill
# histograms, print a summary and a `CHECKSUM <hex>` line to compare runs.
#
#   julia jetjob.jl EVENTFILE [--report] [--plot]
#
# CasReport is not in the example system image; with --report it is loaded
# from the depot's precompile cache (.ji) for the running image.
using CasLorentz, CasJets, CasHist, CasEvents

struct Histos
    jetpt::Hist1D{Float64,UniformBins{Float64}}
    jeteta::Hist1D{Float64,VariableBins{Float64}}
    njets::Hist1D{Int,UniformBins{Float64}}
    mjj::Hist1D{Float32,UniformBins{Float32}}
    ptrap::Hist2D{Float64,UniformBins{Float64},UniformBins{Float64}}
    ktnjets::Hist1D{Int,UniformBins{Float64}}
    cadr::Hist1D{Float64,UniformBins{Float64}}
    ptstats::RunningStats{Float64}
end

Histos() = Histos(
    Hist1D(UniformBins(0.0, 400.0, 80)),
    Hist1D(VariableBins([-4.0, -2.5, -1.5, -0.8, 0.0, 0.8, 1.5, 2.5, 4.0])),
    Hist1D{Int}(UniformBins(-0.5, 15.5, 16)),
    Hist1D{Float32}(UniformBins(0.0f0, 1500.0f0, 60)),
    Hist2D(UniformBins(0.0, 400.0, 20), UniformBins(-4.0, 4.0, 16)),
    Hist1D{Int}(UniformBins(-0.5, 30.5, 31)),
    Hist1D(UniformBins(0.0, 6.0, 30)),
    RunningStats(),
)

function fill_event!(h::Histos, ev)
    jets = inclusive_jets(cluster(ev, AntiKt(), 0.4); ptmin=5.0)
    push!(h.njets, length(jets))
    for j in jets
        push!(h.jetpt, pt(j))
        push!(h.jeteta, eta(j))
        push!(h.ptrap, pt(j), rapidity(j))
        push!(h.ptstats, pt(j))
    end
    length(jets) >= 2 && push!(h.mjj, Float32(mass(jets[1] + jets[2])))
    ev32 = LorentzVector{Float32}.(ev)
    push!(h.ktnjets, njets(cluster(ev32, Kt(), 0.4f0); ptmin=5))
    ca = inclusive_jets(cluster(ev, CambridgeAachen(), 0.4; scheme=PtScheme()); ptmin=5.0)
    length(ca) >= 2 && push!(h.cadr, deltar(ca[1], ca[2]))
    return length(jets)
end

function checksum(h::Histos)
    d = fnv1a("casdemo-1")
    for name in fieldnames(Histos)
        d = digest(getfield(h, name), d)
    end
    return d
end

function print_report(h::Histos, plot::Bool)
    R = Main.CasReport
    println(R.summary_line("jet pt", h.jetpt))
    println(R.summary_line("jet eta", h.jeteta))
    println(R.summary_line("njets", h.njets))
    println(R.summary_line("mjj", h.mjj))
    plot && R.ascii_plot(stdout, h.jetpt)
end

function main(args)
    isempty(args) && error("usage: jetjob.jl EVENTFILE [--report] [--plot]")
    events = read_events(args[1])
    h = Histos()
    total = sum(ev -> fill_event!(h, ev), events)
    println("EVENTS ", length(events), " JETS ", total)
    if "--report" in args || "--plot" in args
        @eval Main using CasReport
        Base.invokelatest(print_report, h, "--plot" in args)
    end
    println("CHECKSUM ", string(checksum(h); base=16, pad=16))
end

main(ARGS)
