"""A user's configure_model calling transformers' from_config under ZeRO-3 (needs HfDeepSpeedConfig registered)."""
import torch, lightning_rlhf
from lightning import LightningModule, Trainer
from transformers import AutoConfig, AutoModelForCausalLM
class M(LightningModule):
    def configure_model(self):
        if not hasattr(self, "model"):
            self.model = AutoModelForCausalLM.from_config(AutoConfig.for_model("opt", hidden_size=32, num_hidden_layers=1, num_attention_heads=2, ffn_dim=64, word_embed_proj_dim=32, vocab_size=100, pad_token_id=1))
            print("partitioned", all(p.numel()==0 for p in self.model.parameters()))
    def training_step(self, b, i): return self.model(input_ids=b[0], labels=b[0]).loss
    def configure_optimizers(self): return torch.optim.AdamW(self.model.parameters())
t = Trainer(strategy="hybrid_deepspeed", accelerator="cpu", devices=1, max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False)
t.fit(M(), torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randint(3, 100, (8, 6))), batch_size=4))
print("ok", t.global_step)
