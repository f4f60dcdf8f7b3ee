import mxnet as mx
import numpy as np

from mxnet import nd
from mxnet import gluon
from mxnet import autograd

'''
BN_ReLU_CONV: 非线性单元
'''
def BN_ReLU_CONV(channels, kernel_size, strides=1, padding=0, erase_relu=False):
    basic = gluon.nn.HybridSequential()
    with basic.name_scope():
        basic.add(gluon.nn.BatchNorm(axis=1, epsilon=2e-5))
        if not erase_relu:
            basic.add(gluon.nn.Activation('relu'))
        basic.add(gluon.nn.Conv2D(channels, kernel_size=kernel_size, 
                                  strides=strides, padding=padding)) 
    return basic


'''
SparseUnit: Sparse单元
'''
class SparseUnit(gluon.HybridBlock):
    def __init__(self, channels, bottleneck=False, **kwargs):
        super().__init__(**kwargs)
        # bottleneck unit
        self.bottleneck = bottleneck
        with self.name_scope():
            unit = self.unit = gluon.nn.HybridSequential()
            if self.bottleneck:
                unit.add(BN_ReLU_CONV(channels, kernel_size=1))
            unit.add(BN_ReLU_CONV(channels, kernel_size=3, padding=1))
            
    def hybrid_forward(self, F, X):
        return self.unit(X)

'''
fetch_exponential_idx: 返回列表中的2^k的index
'''
def fetch_exponential_idx(x_list):
    count = len(x_list)
    i = 1    
    inputs = []
    while i <= count:
        inputs.append(x_list[count - i])
        i *= 2
    return inputs

'''
SparseBlock: Sparse block层
'''
class SparseBlock(gluon.HybridBlock):
    def __init__(self, nDenseBlock, growth_rate, bottleneck=False, droprate=.0, **kwargs):
        super().__init__(**kwargs)
        self.nDenseBlock = nDenseBlock
        with self.name_scope():
            net = self.net = gluon.nn.HybridSequential()
            for i in range(nDenseBlock):
                blk = gluon.nn.HybridSequential()
                if bottleneck:
                    interchannels = 4 * growth_rate
                    blk.add(BN_ReLU_CONV(interchannels, kernel_size=1, erase_relu=True))
                    if droprate > .0:
                        blk.add(gluon.nn.Dropout(droprate)) 
                    blk.add(BN_ReLU_CONV(growth_rate, kernel_size=3, padding=1))
                    if droprate > .0:
                        blk.add(gluon.nn.Dropout(droprate)) 
                else:
                    blk.add(BN_ReLU_CONV(growth_rate, kernel_size=3, padding=1))
                    if droprate > .0:
                        blk.add(gluon.nn.Dropout(droprate)) 
                # add BN layer each
                blk.add(gluon.nn.BatchNorm(axis=1, epsilon=2e-5))
                net.add(blk)
        
    def hybrid_forward(self, F, X):
        X_list = [X]
        for i, blk in enumerate(self.net):
            X = blk(X)
            X_list.append(X)
            expidx_output = fetch_exponential_idx(X_list)
            
            # concat
            tmp = expidx_output[0] 
            for out in expidx_output[1:]:
                tmp = F.concat(tmp, out, dim=1)
            X = tmp
        print('SparseBlk - ', X.shape)
        return X

'''
TransitionLayer: 过渡层
'''
def TransitionLayer(channels, droprate=0.0):
    layer = gluon.nn.HybridSequential()
    with layer.name_scope():
        layer.add(BN_ReLU_CONV(channels, kernel_size=1))
        if droprate > 0.0:
            layer.add(gluon.nn.Dropout(droprate))
        layer.add(gluon.nn.AvgPool2D(pool_size=2, strides=2))
    return layer

'''
num_classes: 待预测的类别数
num_sparseblk_count: 共需要加入几个SparseBlock
depth: 网络总的层数
reduction: transitionlayer的输出通道数减少比例
droprate: transitionlayer的dropout层的丢弃比例
growth_rate: 每个SparseBlock的固定输出通道数
init_channels: Init Conv Layer的初始输出通道数
bottleneck: 是否为bottleneck
verbose: 打印调试信息
'''
class SparseNet(gluon.HybridBlock):
    def __init__(self, num_classes, num_sparseblk_count, depth, reduction=.5, droprate=0.0, growth_rate=12, 
                 bottleneck=False, verbose=False, **kwargs):
        super().__init__(**kwargs)
        self.verbose = verbose
        with self.name_scope(): 
            net = self.net = gluon.nn.HybridSequential() # 整合之后的网络
            
            # 每个SpraseBlock有多少个block
            nDenseBlock = (depth - 4) // num_sparseblk_count
            # 如果是bottleneck，那么每个nDenseBlock减半，因为每个bottleneck中有两个Conv2D
            if bottleneck:
                nDenseBlock //= 2
            else:
                reduction = 1
            
            # Init Conv Layer
            init_channels = growth_rate
            net.add(gluon.nn.Conv2D(init_channels, kernel_size=3, padding=1))
            
            # Sparse Connected Layer
            sparse_output_channel = init_channels
            for idx in range(num_sparseblk_count):
                b2 = gluon.nn.HybridSequential()
                
                # Adding SparseBlock
                b2.add(SparseBlock(nDenseBlock, growth_rate, bottleneck))
                
                # 统计每个sparseblock的输出通道数 用于给过渡层以固定的reduction比例减少通道数
                sparse_output_filter = [sparse_output_channel]
                for _ in range(nDenseBlock):
                    sparse_output_filter.append(growth_rate)
                sparse_output_channel = sum(fetch_exponential_idx(sparse_output_filter)) * reduction
                
                # 过渡层比SparseBlock层少一层 
                if idx != num_sparseblk_count - 1:
                    # Transition Layer 每次过渡层将输出通道减半
                    b2.add(TransitionLayer(int(sparse_output_channel), droprate))
                net.add(b2)
            
            ############# final feature layer
            net.add(gluon.nn.BatchNorm(axis=1))
            net.add(gluon.nn.Activation('relu'))
            #############        
            
            # Classification Layer
            b3 = gluon.nn.HybridSequential()
            b3.add(
                gluon.nn.GlobalAvgPool2D(),
                gluon.nn.Dense(num_classes)
            )
            net.add(b3)
            
    def hybrid_forward(self, F, X):
        out = X
        for i, blk in enumerate(self.net):
            out = blk(out)
            if self.verbose:
                print("blk %d : %s" % (i+1, out.shape))
        return out
