"""
    CasReport

Text summaries of CasHist histograms. It is deliberately *not* baked into the
example system image, so the depot must carry a precompile cache (.ji) for it
that matches each variant's sysimage.
"""
module CasReport

using CasHist
using Printf

export summary_line, ascii_plot

"One line: name, entries, mean and std of a 1-D histogram."
function summary_line(name::AbstractString, h::Hist1D)
    return @sprintf("%-10s n=%-8.6g mean=%-10.5g std=%-10.5g", name,
                    integral(h), hist_mean(h), hist_std(h))
end

"A crude horizontal bar chart, `width` characters at the tallest bin."
function ascii_plot(io::IO, h::Hist1D; width::Int=40)
    c = h.sumw[2:end-1]
    top = maximum(c)
    centers = bincenters(h.binning)
    for (x, w) in zip(centers, c)
        n = top > 0 ? round(Int, width * w / top) : 0
        @printf(io, "%10.3g | %s\n", x, repeat('#', n))
    end
    return nothing
end

end # module
