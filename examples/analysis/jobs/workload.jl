# Sysimage workload: run the real job once (traced with --trace-compile, then run
# again while the image is generated) so its code is compiled into the image.
using CasAnalysis
CasAnalysis.main(String[])
