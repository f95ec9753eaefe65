"""Linear probe of the embedded backbones on digits (frozen CLS features + logistic regression).

    PYTHONPATH=. python scripts/probe_embedded_backbone.py

Quoted in rep_tune/runtime/weights/MODEL_CARD.md: the pre-trained features must transfer to the
default continual benchmark (digits), which the backbones never saw.
"""
import torch, numpy as np, timm, time
torch.set_num_threads(1)
from rep_tune.runtime.backbone import load_backbone
from rep_tune.runtime.selection import cls_feature
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
import torch.nn.functional as F
d=load_digits(); x=torch.tensor(d.images,dtype=torch.float32)/16.
x=F.interpolate(x[:,None],size=(28,28),mode='bilinear',align_corners=False); x=F.pad(x,(2,2,2,2)); x=(x-0.5)/0.5; x=x.expand(-1,3,-1,-1)
y=d.target
for name,pre in [("vit_micro_patch4_32.fmnist",True),("vit_micro_patch4_32.fmnist",False),("vit_pico_patch4_32.fmnist",True)]:
    m=load_backbone(name,pretrained=pre)
    with torch.no_grad(): f=torch.cat([cls_feature(m,x[i:i+256]) for i in range(0,len(x),256)]).numpy()
    a,b,c,e=train_test_split(f,y,test_size=0.2,random_state=0,stratify=y)
    print(name,pre,LogisticRegression(max_iter=2000).fit(a,c).score(b,e))
