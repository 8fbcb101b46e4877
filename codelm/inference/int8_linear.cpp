// codelm::int8_linear(x, w, scale) = x @ w.T * scale: fp32 activations x (B, K), int8 weights w (N, K), one fp32
// scale per output channel. AVX2 + FMA. Decoding reads every weight once per token, so at batch 1 the time is the
// weight bytes over memory bandwidth: a quarter of fp32's. torch's own _weight_int8pack_mm is ~10x slower than
// fp32 on AVX2-only CPUs, hence this kernel; activations stay fp32 (no activation quantization, no quality loss).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <immintrin.h>
#include <torch/library.h>

namespace {

inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

inline __m256 load8(const int8_t* p) {  // 8 int8 -> 8 fp32
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}

// C output columns for R rows of x: each weight is converted once and used R times; K is a multiple of 8.
template <int R, int C>
void block(const float* x, const int8_t* w, const float* scale, float* y, int64_t K, int64_t N) {
    __m256 acc[R][C];
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++) acc[r][c] = _mm256_setzero_ps();
    for (int64_t k = 0; k < K; k += 8) {
        __m256 v[C];
        for (int c = 0; c < C; c++) v[c] = load8(w + c * K + k);
        for (int r = 0; r < R; r++) {
            __m256 xv = _mm256_loadu_ps(x + r * K + k);
            for (int c = 0; c < C; c++) acc[r][c] = _mm256_fmadd_ps(xv, v[c], acc[r][c]);
        }
    }
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++) y[r * N + c] = hsum(acc[r][c]) * scale[c];
}

template <int C>
void columns(const float* x, const int8_t* w, const float* scale, float* y, int64_t B, int64_t K, int64_t N) {
    int64_t b = 0;
    for (; b + 2 <= B; b += 2) block<2, C>(x + b * K, w, scale, y + b * N, K, N);
    if (b < B) block<1, C>(x + b * K, w, scale, y + b * N, K, N);
}

at::Tensor int8_linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& scale) {
    TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && x.size(1) == w.size(1), "int8_linear: x (B, K) and w (N, K)");
    TORCH_CHECK(x.size(1) % 8 == 0, "int8_linear: K must be a multiple of 8");
    TORCH_CHECK(x.scalar_type() == at::kFloat && w.scalar_type() == at::kChar && scale.scalar_type() == at::kFloat,
                "int8_linear: x fp32, w int8, scale fp32");
    const auto xc = x.contiguous(), wc = w.contiguous(), sc = scale.contiguous();
    const int64_t B = x.size(0), K = x.size(1), N = w.size(0);
    auto y = at::empty({B, N}, x.options());
    const float* X = xc.data_ptr<float>();
    const int8_t* W = wc.data_ptr<int8_t>();
    const float* S = sc.data_ptr<float>();
    float* Y = y.data_ptr<float>();
    constexpr int C = 4;  // 4 x 2 accumulators, 4 weight vectors, 1 input vector: within AVX2's 16 registers
    at::parallel_for(0, N / C, 16, [&](int64_t begin, int64_t end) {
        for (int64_t n = begin * C; n < end * C; n += C) columns<C>(X, W + n * K, S + n, Y + n, B, K, N);
    });
    for (int64_t n = N / C * C; n < N; n++) columns<1>(X, W + n * K, S + n, Y + n, B, K, N);
    return y;
}

}  // namespace

TORCH_LIBRARY(codelm, m) { m.def("int8_linear(Tensor x, Tensor w, Tensor scale) -> Tensor"); }
TORCH_LIBRARY_IMPL(codelm, CPU, m) { m.impl("int8_linear", &int8_linear); }
