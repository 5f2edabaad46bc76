/** Tensor roles of the engine, in the order of kle.h's KLE_T_* enum (checked by a test). */
export const ROLES = [
  'TOK_EMBD', 'OUT_NORM', 'LM_HEAD',
  'ATTN_NORM', 'FFN_NORM',
  'KDA_Q', 'KDA_K', 'KDA_V', 'KDA_CONV_Q', 'KDA_CONV_K', 'KDA_CONV_V',
  'KDA_F_A', 'KDA_F_B', 'KDA_A_LOG', 'KDA_DT_BIAS', 'KDA_BETA',
  'KDA_G_A', 'KDA_G_B', 'KDA_O_NORM', 'KDA_O',
  'MLA_Q', 'MLA_KV_A', 'MLA_KV_NORM', 'MLA_KV_B', 'MLA_O',
  'FFN_GATE', 'FFN_UP', 'FFN_DOWN',
  'MOE_ROUTER', 'MOE_BIAS', 'EXP_GATE', 'EXP_UP', 'EXP_DOWN',
  'SHEXP_GATE', 'SHEXP_UP', 'SHEXP_DOWN',
  'MLA_KV_IMPORTANCE',
] as const;

export type Role = (typeof ROLES)[number];

export function roleId(r: Role): number {
  return ROLES.indexOf(r);
}

/** Where a tensor goes: its role, its layer (-1 for the global ones) and expert (0 if none). */
export interface TensorSlot {
  readonly role: Role;
  readonly layer: number;
  readonly expert: number;
}

export const EXPERT_ROLES: ReadonlySet<Role> = new Set(['EXP_GATE', 'EXP_UP', 'EXP_DOWN']);
