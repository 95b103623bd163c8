// Owns rotary position embedding (HF rotate_half convention) on the CPU [C4.attention].
#pragma once
#include "core/bf16.h"
#include "core/dims.h"
#include "core/op_enums.h"

namespace moe {

// cos/sin table [L, D/2] in acc_t<T> (fp32 for bf16, B5): angle(pos, i) = pos · theta^(-2i/D), computed in fp32
// like HF's rotary embedding.
template <typename T>
void rope_table_ref(acc_t<T>* cos_t, acc_t<T>* sin_t, i64 L, i64 D, double theta);

// In place on x [B·L, NHx·D]: per head, halves (x1, x2) → (x1·c − x2·s, x2·c + x1·s); position = row % L, or
// row % L − doc_start[row] with packed documents (doc_start [B·L] non-null: where the row's document starts).
// Backward is the same call with Direction::Inverse (rotation by −angle). Rotation in acc_t<T> (bf16: from bf16 x in
// fp32, each output rounded once, B5).
template <typename T>
void rope_apply_ref(T* x, const acc_t<T>* cos_t, const acc_t<T>* sin_t, i64 B, i64 L, i64 NHx, i64 D,
                    RopeDirection dir, const int32_t* doc_start = nullptr);

}  // namespace moe
