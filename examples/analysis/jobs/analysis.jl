# The example job: julia analysis.jl [EVENTFILE].  The analysis is the package
# CasAnalysis, compiled into the depot's system image; a job stays two lines.
using CasAnalysis
CasAnalysis.main(ARGS)
