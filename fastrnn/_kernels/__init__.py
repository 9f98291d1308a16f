"""Compiled kernels of fastrnn: _engine (Cython time loops over BLAS and the C gate math in gates.c /
gates_avx2.c).  Import them through fastrnn._native, which loads the BLAS first."""
